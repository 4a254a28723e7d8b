"""The token-level feature file (recbole_mmm4rec/data/tokens.py): write, read, align by token, validation,
the 1-token form of a features.npz, and its check in python -m recbole_mmm4rec.check."""

import numpy as np
import pytest
import torch

from recbole_mmm4rec.data.features import FeatureFileError, read_features, write_features
from recbole_mmm4rec.data.tokens import (
    align_tokens,
    load_item_tokens,
    read_tokens,
    token_path,
    tokens_from_features,
    write_tokens,
)

ITEMS = ["B001", "B002", "B003", "B004"]
ID2TOKEN = ["[PAD]", "B003", "B001", "B004", "B002"]  # RecBole's internal order differs from the file's


def example(seed=0):
    """Text tokens of 4 items (lengths 3, 1, 4, 2 of T = 4) and image tokens (B002 has no image)."""
    rng = np.random.default_rng(seed)
    states = {"text": rng.normal(size=(4, 4, 3)).astype(np.float32), "image": rng.normal(size=(4, 2, 5))}
    lengths = {"text": np.array([3, 1, 4, 2]), "image": np.array([2, 0, 2, 2])}
    return states, lengths


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "tiny" / "tiny.tokens.npz"
    states, lengths = example()
    write_tokens(path, ITEMS, states, lengths)
    return path, states, lengths


def real_rows(states, lengths, row):
    """The real token vectors of one file row, as float16 stores them."""
    return states[row, : lengths[row]].astype(np.float16).astype(np.float32)


def test_round_trip_keeps_real_tokens_and_zeroes_padding(written):
    path, states, lengths = written
    with np.load(path, allow_pickle=False) as raw:
        assert raw["text"].dtype == np.float16 and raw["text"].shape == (4, 4, 3)
        assert raw["text_lengths"].tolist() == [3, 1, 4, 2]
        assert not raw["text"][1, 1:].any() and not raw["image"][1].any()  # padding written as zeros
    item_tokens = read_tokens(str(path))
    assert item_tokens.tokens.tolist() == ITEMS and sorted(item_tokens.modalities) == ["image", "text"]
    for row in range(4):
        np.testing.assert_array_equal(item_tokens.states["text"][row, : lengths["text"][row]],
                                      real_rows(states["text"], lengths["text"], row))


def test_aligned_by_token_with_mask_and_padding_item(written):
    path, states, lengths = written
    tables = align_tokens(read_tokens(str(path)), ID2TOKEN, ("text", "image"))
    text = tables["text"]
    assert text.vectors.dtype == torch.float32 and text.vectors.shape == (5, 4, 3)
    assert text.mask.tolist()[0] == [False] * 4  # row 0: the padding item has no tokens
    for internal_id, token in enumerate(ID2TOKEN[1:], start=1):
        row = ITEMS.index(token)
        n = lengths["text"][row]
        assert text.mask[internal_id].tolist() == [True] * n + [False] * (4 - n)
        expected = real_rows(states["text"], lengths["text"], row)
        np.testing.assert_array_equal(text.vectors[internal_id, :n].numpy(), expected)
        assert not text.vectors[internal_id, n:].any()
    assert tables["image"].present.tolist() == [False, True, True, True, False]  # B002 (id 4) has no image


def test_shuffled_file_rows_give_the_same_tensors(written, tmp_path):
    path, states, lengths = written
    order = [2, 0, 3, 1]
    shuffled = tmp_path / "shuffled.tokens.npz"
    write_tokens(shuffled, [ITEMS[i] for i in order], {m: s[order] for m, s in states.items()},
                 {m: v[order] for m, v in lengths.items()})
    first = align_tokens(read_tokens(str(path)), ID2TOKEN, ("text", "image"))
    second = align_tokens(read_tokens(str(shuffled)), ID2TOKEN, ("text", "image"))
    for modality in first:
        assert torch.equal(first[modality].vectors, second[modality].vectors)
        assert torch.equal(first[modality].mask, second[modality].mask)


def test_unused_positions_are_dropped_and_absent_modality_is_empty(written):
    path, _, _ = written
    tables = align_tokens(read_tokens(str(path)), ["[PAD]", "B002", "B004"], ("text", "audio"), {"audio": 7})
    assert tables["text"].vectors.shape == (3, 2, 3)  # longest of B002 (1) and B004 (2)
    assert tables["audio"].vectors.shape == (3, 1, 7) and not tables["audio"].present.any()


def test_nan_is_named_with_file_modality_item_and_position(tmp_path):
    states, lengths = example()
    states["text"][2, 3, 1] = np.nan
    path = tmp_path / "bad.tokens.npz"
    named = r"bad\.tokens\.npz: 'text' has NaN or inf.*item 'B003', token position 3"
    with pytest.raises(FeatureFileError, match=named):
        write_tokens(path, ITEMS, states, lengths)
    assert not path.exists()
    states["text"][1, 3, 1] = np.nan  # a padded position (B002 has 1 token) is never read: fine
    states["text"][2, 3, 1] = 0.0
    write_tokens(path, ITEMS, states, lengths)


def test_nan_in_a_file_is_found_on_reading(written):
    path, _, _ = written
    arrays = dict(np.load(path))
    arrays["image"][3, 1, 0] = np.inf
    np.savez(path, **arrays)
    named = r"tiny\.tokens\.npz: 'image' has NaN or inf.*item 'B004', token position 1"
    with pytest.raises(FeatureFileError, match=named):
        read_tokens(str(path))


@pytest.mark.parametrize("lengths, message", [
    ({"text": [3, 1, 5, 2], "image": [2, 0, 2, 2]}, r"'text_lengths' is over the 4 positions.*'B003' has length 5"),
    ({"text": [3, -1, 4, 2], "image": [2, 0, 2, 2]}, r"'text_lengths' is negative.*item 'B002' has length -1"),
    ({"text": [3, 1, 4], "image": [2, 0, 2, 2]}, r"'text_lengths' must have shape \(4,\)"),
    ({"text": [3, 1, 4, 2]}, r"'image' has no 'image_lengths' array"),
])
def test_bad_lengths_are_named(tmp_path, lengths, message):
    states, _ = example()
    with pytest.raises(FeatureFileError, match=r"bad\.tokens\.npz: " + message):
        write_tokens(tmp_path / "bad.tokens.npz", ITEMS, states, {m: np.array(v) for m, v in lengths.items()})


def test_shape_mismatch_and_duplicate_tokens_are_named(tmp_path):
    states, lengths = example()
    path = tmp_path / "bad.tokens.npz"
    with pytest.raises(FeatureFileError, match=r"bad\.tokens\.npz: 'image' has 3 rows but 'item_id' has 4"):
        write_tokens(path, ITEMS, {**states, "image": states["image"][:3]}, lengths)
    with pytest.raises(FeatureFileError, match=r"bad\.tokens\.npz: 'text' must be a 3-D array"):
        write_tokens(path, ITEMS, {**states, "text": states["text"][:, 0]}, lengths)
    with pytest.raises(FeatureFileError, match=r"bad\.tokens\.npz: 'item_id' has 1 duplicate.*'B001'"):
        write_tokens(path, ["B001", "B002", "B001", "B004"], states, lengths)


def test_dataset_item_missing_from_the_file_is_listed(written):
    path, _, _ = written
    listed = r"tiny\.tokens\.npz has no row for 2 of the dataset's 3.*'B777', 'B888'"
    with pytest.raises(FeatureFileError, match=listed):
        align_tokens(read_tokens(str(path)), ["[PAD]", "B777", "B001", "B888"], ("text",))


def test_missing_or_unreadable_file_says_how_to_make_one(tmp_path):
    with pytest.raises(FeatureFileError, match=r"absent\.tokens\.npz is missing.*encode_text\.py FOLDER --tokens"):
        read_tokens(str(tmp_path / "absent.tokens.npz"))
    (tmp_path / "junk.tokens.npz").write_bytes(b"not a zip")
    with pytest.raises(FeatureFileError, match=r"junk\.tokens\.npz cannot be read.*--tokens"):
        read_tokens(str(tmp_path / "junk.tokens.npz"))


def test_global_features_as_one_token_sequences(tmp_path):
    path = tmp_path / "tiny.features.npz"
    image = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_features(path, ITEMS, {"image": image}, {"image": np.array([True, False, True, True])})
    item_tokens = tokens_from_features(read_features(str(path)))
    assert item_tokens.states["image"].shape == (4, 1, 3) and item_tokens.lengths["image"].tolist() == [1, 0, 1, 1]
    image_table = align_tokens(item_tokens, ID2TOKEN, ("image",))["image"]
    assert image_table.mask.tolist() == [[False], [True], [True], [True], [False]]
    np.testing.assert_array_equal(image_table.vectors[2, 0].numpy(), image[0])  # id 2 = B001
    assert not image_table.vectors[4].any()  # B002: no image
    written_back = tmp_path / "tiny.tokens.npz"
    write_tokens(written_back, item_tokens.tokens, item_tokens.states, item_tokens.lengths)
    assert read_tokens(str(written_back)).lengths["image"].tolist() == [1, 0, 1, 1]


def test_load_item_tokens_takes_the_token_file_then_the_feature_file(tmp_path):
    folder = tmp_path / "tiny"
    states, lengths = example()
    write_tokens(token_path(folder), ITEMS, {"text": states["text"]}, {"text": lengths["text"]})
    write_features(folder / "tiny.features.npz", ITEMS, {"text": np.ones((4, 2)), "image": np.ones((4, 6))})
    messages = []
    tables = load_item_tokens(str(folder), ID2TOKEN, ("image", "audio"), log=messages.append)
    assert tables["image"].vectors.shape == (5, 1, 6) and tables["image"].present.tolist() == [False] + [True] * 4
    assert any("global image vectors" in m and "1-token" in m for m in messages)
    assert not tables["audio"].present.any()


def test_check_validates_a_token_file_when_present(tmp_path):
    from recbole_mmm4rec.check import check_dataset

    folder = tmp_path / "tiny"
    folder.mkdir()
    rows = "".join(f"u{u}\t{item}\t{t}\n" for u in range(2) for t, item in enumerate(ITEMS))
    (folder / "tiny.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + rows)
    write_features(folder / "tiny.features.npz", ITEMS, {"text": np.ones((4, 2))})
    report = check_dataset(folder, use_config=False)
    assert report.ok and any(c["check"] == "tokens" and "absent" in c["message"] for c in report.checks)

    states, lengths = example()
    write_tokens(token_path(folder), ITEMS, states, lengths)
    report = check_dataset(folder, use_config=False)
    assert report.ok, report.to_text()
    assert report.figures["tokens"]["text"] == {"dim": 3, "positions": 4, "present": 4, "mean_length": 2.5}

    write_tokens(token_path(folder), ITEMS[:3], {"text": states["text"][:3]}, {"text": lengths["text"][:3]})
    report = check_dataset(folder, use_config=False)
    assert not report.ok and "no row for 1 of the 4 item(s) of the .inter: 'B004'" in report.to_text()

    arrays = dict(np.load(token_path(folder)))
    arrays["text"][0, 0, 0] = np.nan
    np.savez(token_path(folder), **arrays)
    report = check_dataset(folder, use_config=False)
    assert not report.ok and "item 'B001', token position 0" in report.to_text()
