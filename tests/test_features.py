"""Tests of the item feature file format: recbole_mmm4rec/data/features.py."""

import os

import numpy as np
import pytest
import torch

from recbole_mmm4rec.data import features as F
from recbole_mmm4rec.data.features import (
    FEATURE_SUFFIX,
    FeatureFileError,
    align_features,
    feature_path,
    read_features,
    write_features,
)

TOKENS = ["B001", "B002", "B003", "B004"]


def make_tables(n=len(TOKENS), d_text=6, d_image=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "text": rng.normal(size=(n, d_text)).astype(np.float32),
        "image": rng.normal(size=(n, d_image)).astype(np.float32),
    }


def raw_savez(path, **arrays):
    """Write an npz without any validation, to build malformed files."""
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def expect_error(path, *fragments):
    """read_features(path) must fail with a message holding the path and every fragment."""
    with pytest.raises(FeatureFileError) as info:
        read_features(path)
    for fragment in (str(path),) + fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


# ----------------------------------------------------------------------------- write / read


def test_feature_path():
    assert feature_path("data", "sci") == os.path.join("data", "sci", "sci" + FEATURE_SUFFIX)
    assert FEATURE_SUFFIX == ".features.npz"


def test_roundtrip_float16_on_disk_float32_back(tmp_path):
    path = tmp_path / "d.features.npz"
    tables = make_tables()
    image_mask = np.array([True, False, True, True])
    write_features(path, TOKENS, tables, masks={"image": image_mask})

    with np.load(path, allow_pickle=False) as raw:
        assert raw["item_id"].dtype.kind == "U"
        assert raw["text"].dtype == np.float16 and raw["image"].dtype == np.float16
        assert "text_mask" not in raw.files
        assert not raw["image"][1].any()  # missing row stored as zeros

    feats = read_features(path)
    assert feats.path == str(path)
    assert list(feats.tokens) == TOKENS
    assert feats.tables["text"].dtype == np.float32
    np.testing.assert_allclose(feats.tables["text"], tables["text"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(feats.tables["image"][image_mask], tables["image"][image_mask], rtol=1e-3, atol=1e-3)
    assert feats.masks["text"].dtype == np.bool_ and feats.masks["text"].all()
    np.testing.assert_array_equal(feats.masks["image"], image_mask)


def test_float32_on_disk_is_accepted(tmp_path):
    path = tmp_path / "d.features.npz"
    tables = make_tables()
    write_features(path, TOKENS, tables, dtype=np.float32)
    np.testing.assert_array_equal(read_features(path).tables["text"], tables["text"])


def test_missing_rows_may_hold_nan(tmp_path):
    """Rows whose mask is False are never read, whatever they hold."""
    path = tmp_path / "d.features.npz"
    table = make_tables()["text"]
    table[2] = np.nan
    raw_savez(path, item_id=np.array(TOKENS), text=table, text_mask=np.array([True, True, False, True]))
    feats = read_features(path)
    assert not feats.tables["text"][2].any()


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "d.features.npz"
    write_features(path, TOKENS, make_tables(seed=1))
    before = path.read_bytes()

    def failing_savez(file, **arrays):
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(F.np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        write_features(path, TOKENS, make_tables(seed=2))
    monkeypatch.undo()

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(F.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        write_features(path, TOKENS, make_tables(seed=3))
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]  # no temp file left behind


def test_write_validates(tmp_path):
    path = tmp_path / "d.features.npz"
    with pytest.raises(FeatureFileError, match="duplicate item token.*'B001'"):
        write_features(path, ["B001", "B001", "B003", "B004"], make_tables())
    with pytest.raises(FeatureFileError, match="'text' has 3 rows"):
        write_features(path, TOKENS, {"text": np.zeros((3, 2))})
    with pytest.raises(FeatureFileError, match="'image_mask' must have shape"):
        write_features(path, TOKENS, make_tables(), masks={"image": np.ones(3, dtype=bool)})
    big = make_tables()
    big["text"][1, 0] = 1e6  # overflows float16
    with pytest.raises(FeatureFileError, match="'text' values of item 'B002' do not fit float16"):
        write_features(path, TOKENS, big)
    assert not path.exists()


# ----------------------------------------------------------------------------- read errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.features.npz"
    expect_error(path, "missing", "Feature files")


def test_corrupt_file(tmp_path):
    path = tmp_path / "d.features.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    expect_error(path, "cannot be read")


def test_truncated_file(tmp_path):
    path = tmp_path / "d.features.npz"
    write_features(path, TOKENS, make_tables())
    path.write_bytes(path.read_bytes()[:300])
    expect_error(path, "cannot be read")


def test_no_item_id(tmp_path):
    path = tmp_path / "d.features.npz"
    raw_savez(path, text=make_tables()["text"])
    expect_error(path, "'item_id'")


def test_duplicate_token(tmp_path):
    path = tmp_path / "d.features.npz"
    raw_savez(path, item_id=np.array(["B001", "B002", "B002", "B004"]), **make_tables())
    expect_error(path, "duplicate", "'B002'")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_value_names_item(tmp_path, bad_value):
    path = tmp_path / "d.features.npz"
    tables = make_tables()
    tables["image"][2, 1] = bad_value
    raw_savez(path, item_id=np.array(TOKENS), **tables)
    expect_error(path, "'image'", "NaN or inf", "'B003'")


def test_table_not_2d(tmp_path):
    path = tmp_path / "d.features.npz"
    raw_savez(path, item_id=np.array(TOKENS), text=np.zeros(4, dtype=np.float16))
    expect_error(path, "'text'", "2-D")


def test_table_wrong_rows(tmp_path):
    path = tmp_path / "d.features.npz"
    raw_savez(path, item_id=np.array(TOKENS), text=np.zeros((5, 3), dtype=np.float16))
    expect_error(path, "'text'", "5 rows")


def test_mask_wrong_length_or_dtype(tmp_path):
    path = tmp_path / "d.features.npz"
    raw_savez(path, item_id=np.array(TOKENS), **make_tables(), image_mask=np.ones(3, dtype=bool))
    expect_error(path, "'image_mask'", "shape")
    raw_savez(path, item_id=np.array(TOKENS), **make_tables(), image_mask=np.ones(4, dtype=np.int8))
    expect_error(path, "'image_mask'", "bool")


# ----------------------------------------------------------------------------- alignment


ID2TOKEN = ["[PAD]", "B003", "B001", "B004"]  # B002 is in the file, not in the dataset


def test_align_by_token_not_by_row(tmp_path):
    tables = make_tables()
    mask = np.array([True, True, False, True])
    write_features(tmp_path / "a.npz", TOKENS, tables, masks={"image": mask})
    order = np.array([3, 1, 0, 2])
    shuffled = {m: t[order] for m, t in tables.items()}
    write_features(tmp_path / "b.npz", [TOKENS[i] for i in order], shuffled, masks={"image": mask[order]})

    a = align_features(read_features(tmp_path / "a.npz"), ID2TOKEN, ("text", "image"))
    b = align_features(read_features(tmp_path / "b.npz"), ID2TOKEN, ("text", "image"))
    for modality in ("text", "image"):
        assert torch.equal(a[modality][0], b[modality][0])
        assert torch.equal(a[modality][1], b[modality][1])

    text, present = a["text"]
    assert text.dtype == torch.float32 and text.shape == (4, 6)
    assert present.dtype == torch.bool
    assert not text[0].any() and not present[0]  # padding
    assert present[1:].all()
    expected_b001 = torch.from_numpy(tables["text"][0].astype(np.float16).astype(np.float32))
    assert torch.equal(text[2], expected_b001)  # internal id 2 = token B001 = file row 0

    image, image_present = a["image"]
    assert image_present.tolist() == [False, False, True, True]  # B003 has no image
    assert not image[1].any()


def test_align_missing_item_names_it(tmp_path):
    path = tmp_path / "d.features.npz"
    write_features(path, TOKENS, make_tables())
    with pytest.raises(FeatureFileError) as info:
        align_features(read_features(path), ["[PAD]", "B001", "X9", "X8"], ("text",))
    message = str(info.value)
    assert str(path) in message and "'X9'" in message and "'X8'" in message and "2 of" in message


def test_align_expected_dims(tmp_path):
    path = tmp_path / "d.features.npz"
    write_features(path, TOKENS, make_tables(d_text=6))
    feats = read_features(path)
    align_features(feats, ID2TOKEN, ("text",), expected_dims={"text": 6})
    with pytest.raises(FeatureFileError) as info:
        align_features(feats, ID2TOKEN, ("text",), expected_dims={"text": 512})
    assert str(path) in str(info.value)
    assert "text features of dimension 6, expected 512" in str(info.value)


def test_align_without_image_modality(tmp_path):
    path = tmp_path / "d.features.npz"
    write_features(path, TOKENS, {"text": make_tables()["text"]})
    aligned = align_features(read_features(path), ID2TOKEN, ("text", "image"))
    image, present = aligned["image"]
    assert image.shape == (4, 1) and not image.any()
    assert present.shape == (4,) and not present.any()
    assert aligned["text"][1][1:].all()
    # with an expected dimension the missing modality gets it, so shapes match across domains
    image, present = align_features(read_features(path), ID2TOKEN, ("text", "image"), {"image": 512})["image"]
    assert image.shape == (4, 512) and not image.any() and not present.any()


def test_align_accepts_numpy_id2token(tmp_path):
    """RecBole's field2id_token['item_id'] is a numpy array of str."""
    path = tmp_path / "d.features.npz"
    write_features(path, TOKENS, make_tables())
    aligned = align_features(read_features(path), np.array(ID2TOKEN), ("text",))
    assert aligned["text"][0].shape == (4, 6)
