"""Tests of feature_extraction/import_rechorus.py on the real Office data and tiny sources, and of the
bundled atomic_data/office as RecBole loads it."""

import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from recbole.data import create_dataset

import recbole_mmm4rec
from conftest import TINY

REPO = Path(__file__).resolve().parents[1]
SOURCE = Path("/work/shared/data/amazon2014_office")
DAY = 86400


def load_importer():
    """The converter is a script, not a package module: load it from its path."""
    spec = importlib.util.spec_from_file_location("import_rechorus", REPO / "feature_extraction" / "import_rechorus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


importer = load_importer()


def read_tsv(path):
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n").split("\t") for line in handle]


def source_rows(split):
    """[(user token, ASIN, day in unix seconds)] of one source csv, in file order."""
    asin = {i: a for a, i in read_tsv(SOURCE / "Office.item2index")}
    return [(user, asin[item], int(time)) for user, item, time in read_tsv(SOURCE / f"{split}.csv")[1:]]


def sequences_by_time(inter_path):
    """{user token: [(timestamp, ASIN)] sorted by timestamp} of a converted .inter file."""
    sequences = defaultdict(list)
    for user, item, timestamp in read_tsv(inter_path)[1:]:
        sequences[user].append((float(timestamp), item))
    return {user: sorted(seq) for user, seq in sequences.items()}


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    if not SOURCE.is_dir():
        pytest.skip(f"{SOURCE} is not available")
    out = tmp_path_factory.mktemp("atomic")
    stats = importer.convert(str(SOURCE), "office", str(out), log=lambda *args: None)
    return out / "office", stats


def test_counts(converted):
    folder, stats = converted
    assert (stats["users"], stats["items"], stats["interactions"]) == (4905, 2420, 53258)
    assert json.loads((folder / "office.stats.json").read_text()) == stats
    rows = read_tsv(folder / "office.inter")
    assert rows[0] == ["user_id:token", "item_id:token", "timestamp:float"]
    assert len(rows) - 1 == 53258
    assert len({user for user, _, _ in rows[1:]}) == 4905 and len({item for _, item, _ in rows[1:]}) == 2420
    items = read_tsv(folder / "office.item")
    assert items[0] == ["item_id:token", "text:token_seq"]
    assert len(items) - 1 == 2420 and all(len(row) == 2 and row[1] for row in items[1:])


def test_last_two_items_are_the_source_test_and_dev_items(converted):
    folder, _ = converted
    sequences = sequences_by_time(folder / "office.inter")
    test, dev = source_rows("test"), source_rows("dev")
    assert len(test) == len(dev) == len(sequences)
    for (user, test_item, _), (dev_user, dev_item, _) in zip(test, dev):
        assert sequences[user][-1][1] == test_item
        assert sequences[dev_user][-2][1] == dev_item


def test_timestamps_strictly_increase_and_keep_the_real_day(converted):
    folder, _ = converted
    source = defaultdict(list)
    for split in ("train", "dev", "test"):
        for user, item, day in source_rows(split):
            source[user].append((day, item))
    for user, seq in sequences_by_time(folder / "office.inter").items():
        stamps = np.array([t for t, _ in seq])
        assert (np.diff(stamps) > 0).all()
        assert (np.diff(stamps.astype(np.float32)) > 0).all()  # also as RecBole's float32 tensors
        assert [(int(t) // DAY * DAY, item) for t, item in seq] == source[user]  # the source's order and days


# ----------------------------------------------------------------------------- tiny sources


def write_source(folder, rows, with_time=True):
    """A ReChorus-layout folder; rows = {split: [(user, item, time)]}, item ids from 1."""
    folder.mkdir(parents=True, exist_ok=True)
    n_items = max(item for split in rows.values() for _, item, _ in split)
    (folder / "Tiny.item2index").write_text("".join(f"ASIN{i}\t{i}\n" for i in range(1, n_items + 1)))
    (folder / "Tiny.text").write_text("id\ttext\n" + "".join(f"ASIN{i}\tthing  {i}\n" for i in range(1, n_items + 1)))
    for split, split_rows in rows.items():
        header = "user_id\titem_id\ttime\n" if with_time else "user_id\titem_id\n"
        lines = [f"{u}\t{i}\t{t}\n" if with_time else f"{u}\t{i}\n" for u, i, t in split_rows]
        (folder / f"{split}.csv").write_text(header + "".join(lines))
    return folder


TINY_ROWS = {
    "train": [(1, 1, 0), (1, 2, DAY), (2, 3, DAY), (1, 3, DAY), (2, 1, DAY)],
    "dev": [(1, 4, DAY), (2, 2, 2 * DAY)],
    "test": [(1, 5, DAY), (2, 4, 3 * DAY)],
}


def test_ties_get_128_second_steps_in_source_order(tmp_path):
    src = write_source(tmp_path / "src", TINY_ROWS)
    stats = importer.convert(str(src), "tiny", str(tmp_path / "out"), log=lambda *args: None)
    assert stats["interactions_shifted_to_break_ties"] == 4
    rows = read_tsv(tmp_path / "out" / "tiny" / "tiny.inter")[1:]
    assert [r for r in rows if r[0] == "1"] == [
        ["1", "ASIN1", "0"], ["1", "ASIN2", str(DAY)], ["1", "ASIN3", str(DAY + 128)],
        ["1", "ASIN4", str(DAY + 256)], ["1", "ASIN5", str(DAY + 384)],
    ]
    assert read_tsv(tmp_path / "out" / "tiny" / "tiny.item")[1] == ["ASIN1", "thing 1"]


def test_source_without_time_gets_positions_and_says_so(tmp_path):
    src = write_source(tmp_path / "src", TINY_ROWS, with_time=False)
    messages = []
    stats = importer.convert(str(src), "tiny", str(tmp_path / "out"), log=messages.append)
    assert any("NO timestamps" in message for message in messages)
    assert "no real time" in stats["timestamp"]
    rows = read_tsv(tmp_path / "out" / "tiny" / "tiny.inter")[1:]
    assert [r[2] for r in rows if r[0] == "2"] == ["1", "2", "3", "4"]


def test_dev_before_last_train_row_fails(tmp_path):
    rows = {**TINY_ROWS, "dev": [(1, 4, 0), (2, 2, 2 * DAY)]}
    src = write_source(tmp_path / "src", rows)
    with pytest.raises(importer.SourceFormatError, match=r"dev\.csv:2: user 1's interaction at time 0"):
        importer.convert(str(src), "tiny", str(tmp_path / "out"), log=lambda *args: None)
    assert not (tmp_path / "out" / "tiny" / "tiny.inter").exists()  # nothing written on failure


def test_user_without_test_row_fails(tmp_path):
    src = write_source(tmp_path / "src", {**TINY_ROWS, "test": [(1, 5, DAY)]})
    with pytest.raises(importer.SourceFormatError, match="user 2 has 2 train, 1 dev and 0 test rows"):
        importer.convert(str(src), "tiny", str(tmp_path / "out"), log=lambda *args: None)


def test_unknown_item_fails(tmp_path):
    src = write_source(tmp_path / "src", TINY_ROWS)
    (src / "Tiny.item2index").write_text("ASIN1\t1\nASIN2\t2\nASIN3\t3\nASIN4\t4\n")
    with pytest.raises(importer.SourceFormatError, match=r"test\.csv:2: item id 5 is not in Tiny\.item2index"):
        importer.convert(str(src), "tiny", str(tmp_path / "out"), log=lambda *args: None)


# ----------------------------------------------------------------------------- the bundled dataset in RecBole


def test_recbole_loads_office_with_the_source_split():
    """atomic_data/office through RecBole: text for every item, no image, test/valid targets = source's."""
    if not SOURCE.is_dir():
        pytest.skip(f"{SOURCE} is not available")
    config = recbole_mmm4rec.build_config("MMM4Rec", "office", config_dict=dict(TINY))
    dataset = create_dataset(config)
    assert (dataset.user_num - 1, dataset.item_num - 1, dataset.inter_num) == (4905, 2420, 53258)
    text, text_present = dataset.item_features["text"]
    _, image_present = dataset.item_features["image"]
    assert text.shape == (2421, 384) and text_present[1:].all() and not image_present.any()

    _, valid, test = dataset.build()
    for split, source in ((test, source_rows("test")), (valid, source_rows("dev"))):
        users = dataset.id2token("user_id", split.inter_feat["user_id"].numpy())
        items = dataset.id2token("item_id", split.inter_feat["item_id"].numpy())
        assert dict(zip(users, items)) == {user: item for user, item, _ in source}
