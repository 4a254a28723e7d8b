"""Tests of feature_extraction/import_unisrec.py on the real Scientific-MM data and on tiny sources."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from recbole_mmm4rec.data.features import feature_path, read_features

REPO = Path(__file__).resolve().parents[1]
SOURCE = Path("/work/shared/data/amazon2018_scientific_mm")
PREFIX = "Scientific"


def load_importer():
    """The converter is a script, not a package module: load it from its path."""
    spec = importlib.util.spec_from_file_location("import_unisrec", REPO / "feature_extraction" / "import_unisrec.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


importer = load_importer()


def read_tsv(path):
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n").split("\t") for line in handle]


def source_targets(split):
    """{reviewer id: target ASIN} of one split of the source."""
    users = {i: u for u, i in read_tsv(SOURCE / f"{PREFIX}.user2index")}
    items = {i: a for a, i in read_tsv(SOURCE / f"{PREFIX}.item2index")}
    rows = read_tsv(SOURCE / f"{PREFIX}.{split}.inter")[1:]
    return {users[user]: items[target] for user, _, target in rows}


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    if not SOURCE.is_dir():
        pytest.skip(f"{SOURCE} is not available")
    out = tmp_path_factory.mktemp("atomic")
    stats = importer.convert(str(SOURCE), "scientific_mm", str(out), log=lambda *args: None)
    return out / "scientific_mm", stats


def test_counts(converted):
    folder, stats = converted
    assert (stats["users"], stats["items"], stats["interactions"]) == (2928, 1585, 19712)
    assert stats["image_coverage"] == 1.0
    assert json.loads((folder / "scientific_mm.stats.json").read_text()) == stats
    rows = read_tsv(folder / "scientific_mm.inter")
    assert rows[0] == ["user_id:token", "item_id:token", "timestamp:float"]
    assert len(rows) - 1 == 19712
    assert len({user for user, _, _ in rows[1:]}) == 2928
    items = read_tsv(folder / "scientific_mm.item")
    assert items[0] == ["item_id:token", "text:token_seq"]
    assert len(items) - 1 == 1585 and all(len(row) == 2 and row[1] for row in items[1:])


def test_last_items_are_the_source_split(converted):
    folder, _ = converted
    sequences = {}
    for user, item, timestamp in read_tsv(folder / "scientific_mm.inter")[1:]:
        sequences.setdefault(user, []).append((float(timestamp), item))
    test, valid = source_targets("test"), source_targets("valid")
    for user in list(sequences)[:20] + list(sequences)[-20:]:
        seq = sequences[user]
        assert [t for t, _ in seq] == list(range(1, len(seq) + 1))  # ordinal timestamps
        assert seq[-1][1] == test[user]
        assert seq[-2][1] == valid[user]


def test_features_match_raw_rows(converted):
    folder, _ = converted
    features = read_features(feature_path(str(folder.parent), "scientific_mm"))
    assert set(features.tables) == {"text", "image"}
    assert features.tables["text"].shape == (1585, 512) and features.tables["image"].shape == (1585, 512)
    row_of = {token: row for row, token in enumerate(features.tokens)}
    index = {asin: int(i) for asin, i in read_tsv(SOURCE / f"{PREFIX}.item2index")}
    for modality, suffix in (("text", "feat1CLS"), ("image", "feat3CLS")):
        raw = np.fromfile(SOURCE / f"{PREFIX}.{suffix}", dtype="<f4").reshape(1585, 512)
        for asin in ("B00O47ILVA", "B0000223UV", list(index)[-1]):
            np.testing.assert_allclose(
                features.tables[modality][row_of[asin]], raw[index[asin]], rtol=1e-3, atol=1e-3
            )


# ----------------------------------------------------------------------------- tiny sources


def write_source(folder, sequences, cap=50, dim=3, features=True):
    """A UniSRec-layout folder from {user int: [item ints]}, histories capped at ``cap``."""
    folder.mkdir(parents=True, exist_ok=True)
    n_items = 1 + max(i for seq in sequences.values() for i in seq)
    (folder / "Tiny.item2index").write_text("".join(f"ASIN{i}\t{i}\n" for i in range(n_items)))
    (folder / "Tiny.user2index").write_text("".join(f"R{u}\t{u}\n" for u in sorted(sequences)))
    (folder / "Tiny.text").write_text(
        "item_id:token\ttext:token_seq\n" + "".join(f"ASIN{i}\tthing\t{i}\n" for i in range(n_items))
    )
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    splits = {"train": [], "valid": [], "test": []}
    for user, seq in sequences.items():
        n = len(seq)
        for k in range(1, n):
            split = "test" if k == n - 1 else "valid" if k == n - 2 else "train"
            history = " ".join(map(str, seq[max(0, k - cap) : k]))
            splits[split].append(f"{user}\t{history}\t{seq[k]}\n")
    for split, rows in splits.items():
        (folder / f"Tiny.{split}.inter").write_text(header + "".join(reversed(rows)))
    if features:
        table = np.arange(n_items * dim, dtype="<f4").reshape(n_items, dim) + 1
        table.tofile(folder / "Tiny.feat1CLS")
    return folder


def test_tiny_source_without_images(tmp_path):
    src = write_source(tmp_path / "src", {0: [0, 1, 2, 3], 1: [3, 2, 4, 1, 0]})
    stats = importer.convert(str(src), "tiny", str(tmp_path / "out"), log=lambda *args: None)
    assert (stats["users"], stats["interactions"]) == (2, 9)
    assert stats["image_coverage"] == 0.0
    rows = read_tsv(tmp_path / "out" / "tiny" / "tiny.inter")[1:]
    assert rows[:4] == [["R0", f"ASIN{i}", str(i + 1)] for i in range(4)]
    assert read_tsv(tmp_path / "out" / "tiny" / "tiny.item")[1] == ["ASIN0", "thing 0"]  # tab removed
    features = read_features(feature_path(str(tmp_path / "out"), "tiny"))
    assert set(features.tables) == {"text"} and features.tables["text"].shape == (5, 3)


def test_capped_histories_are_rebuilt(tmp_path):
    sequence = [0, 1, 2, 3, 4, 5, 6, 7]
    src = write_source(tmp_path / "src", {0: sequence, 1: [7, 6, 5, 4]}, cap=3)
    stats = importer.convert(str(src), "tiny", str(tmp_path / "out"), cap=3, log=lambda *args: None)
    assert stats["users_at_history_cap"] == 2
    rows = read_tsv(tmp_path / "out" / "tiny" / "tiny.inter")[1:]
    assert [item for user, item, _ in rows if user == "R0"] == [f"ASIN{i}" for i in sequence]


def test_inconsistent_valid_row_fails(tmp_path):
    src = write_source(tmp_path / "src", {0: [0, 1, 2, 3, 4], 1: [1, 2, 3, 4]})
    valid = src / "Tiny.valid.inter"
    valid.write_text(valid.read_text().replace("0\t0 1 2\t3", "0\t0 1 2\t1"))
    with pytest.raises(importer.SourceFormatError, match="valid row of user 0"):
        importer.convert(str(src), "tiny", str(tmp_path / "out"), log=lambda *args: None)


def test_inconsistent_train_row_fails(tmp_path):
    src = write_source(tmp_path / "src", {0: [0, 1, 2, 3, 4], 1: [1, 2, 3, 4]})
    train = src / "Tiny.train.inter"
    train.write_text(train.read_text().replace("0\t0\t1", "0\t0\t4"))
    with pytest.raises(importer.SourceFormatError, match="train row of user 0"):
        importer.convert(str(src), "tiny", str(tmp_path / "out"), log=lambda *args: None)


def test_feature_file_size_must_divide(tmp_path):
    src = write_source(tmp_path / "src", {0: [0, 1, 2, 3], 1: [1, 2, 3, 0]})
    with open(src / "Tiny.feat1CLS", "ab") as handle:
        handle.write(b"\0\0\0\0")
    with pytest.raises(importer.SourceFormatError, match="Tiny.feat1CLS.*not a whole number of float32 rows"):
        importer.convert(str(src), "tiny", str(tmp_path / "out"), log=lambda *args: None)
    assert not os.path.exists(tmp_path / "out" / "tiny" / "tiny.inter")  # nothing written on failure


def test_prefix_inference(tmp_path):
    src = write_source(tmp_path / "src", {0: [0, 1, 2, 3]})
    assert importer.infer_prefix(str(src), ".train.inter") == "Tiny"
    with pytest.raises(importer.SourceFormatError, match=r"exactly one '\*\.train\.inter' file.*--prefix"):
        importer.infer_prefix(str(tmp_path), ".train.inter")
