"""Token-level encoders: feature_extraction/encode_text.py --tokens with the real all-MiniLM-L6-v2 on real
Office item texts (states, mask, resume, ensure_text_tokens), and encode_clip.py --tokens with the tiny CLIP."""

import functools
import sys

import numpy as np
import pytest
import torch

from conftest import load_script
from recbole_mmm4rec.data.features import read_features, write_features
from recbole_mmm4rec.data.tokens import ensure_text_tokens, load_item_tokens, read_tokens, token_path, write_tokens
from test_encode_text import make_dataset, real_items

encode_text = load_script("encode_text")
CAP = 16  # below the longest of the first Office texts, so some are cut
N_ITEMS = 8


@pytest.fixture(scope="module", autouse=True)
def minilm_loaded_once():
    """Every test of this module shares one loaded MiniLM (loading takes seconds)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encode_text, "load_encoder", functools.lru_cache(encode_text.load_encoder))
        patch.setitem(sys.modules, "encode_text", encode_text)  # what ensure_text_tokens runs
        yield


@pytest.fixture(scope="module")
def minilm():
    return encode_text.load_encoder(encode_text.check_encoder_dir(encode_text.default_encoder_dir()))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    items = real_items(N_ITEMS)
    folder = make_dataset(tmp_path_factory.mktemp("data") / "tiny", items, inter_items=[a for a, _ in items])
    result = encode_text.encode_tokens_dataset(str(folder), max_tokens=CAP, batch_size=3, log=lambda *a: None)
    return folder, items, result


def test_token_states_shape_mask_and_values(encoded, minilm):
    folder, items, result = encoded
    texts = [text for _, text in items]
    with np.load(token_path(folder), allow_pickle=False) as raw:
        assert raw["text"].dtype == np.float16 and raw["text"].shape == (N_ITEMS, CAP, 384)
        assert raw["item_id"].tolist() == [asin for asin, _ in items]
    item_tokens = read_tokens(token_path(folder))
    states, lengths = item_tokens.states["text"].astype(np.float32), item_tokens.lengths["text"]
    n_tokenized = np.array([len(minilm[0].tokenizer(t)["input_ids"]) for t in texts])  # [CLS] ... [SEP], uncut
    np.testing.assert_array_equal(lengths, np.minimum(n_tokenized, CAP))
    assert (lengths > 1).all() and (lengths == CAP).any() and (lengths < CAP).any()
    assert result["at_cap"] == int((lengths == CAP).sum())
    assert np.isfinite(states).all()
    assert all(np.abs(states[r, : lengths[r]]).sum(axis=1).min() > 0 for r in range(N_ITEMS))  # real tokens
    assert all(not states[r, lengths[r]:].any() for r in range(N_ITEMS))  # padding dropped
    assert np.abs(states[0, 0] - states[1, 0]).max() > 0.05  # [CLS] differs between products
    # MiniLM's sentence embedding is the normalised mean of these very token states (same cap).
    mean = np.stack([states[r, : lengths[r]].mean(axis=0) for r in range(N_ITEMS)])
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    minilm.max_seq_length = CAP
    try:
        sentence = minilm.encode(texts, convert_to_numpy=True)
    finally:
        minilm.max_seq_length = 256
    np.testing.assert_allclose(mean, sentence, atol=5e-3)


def test_up_to_date_file_is_skipped_unless_the_cap_changes(encoded):
    folder = encoded[0]
    assert encode_text.encode_tokens_dataset(str(folder), max_tokens=CAP, log=lambda *a: None) is None
    other = encode_text.encode_tokens_dataset(str(folder), max_tokens=8, log=lambda *a: None)
    assert other["max_tokens"] == 8 and read_tokens(token_path(folder)).states["text"].shape[1] == 8
    encode_text.encode_tokens_dataset(str(folder), max_tokens=CAP, log=lambda *a: None)  # back, for other tests


def test_interrupted_run_resumes_to_the_same_file(encoded, tmp_path, monkeypatch):
    _, items, _ = encoded
    folder = make_dataset(tmp_path / "tiny", items)
    monkeypatch.setattr(encode_text, "PART_ITEMS", 2)
    encode_text.encode_tokens_dataset(str(folder), max_tokens=CAP, batch_size=2, log=lambda *a: None)
    expected = dict(np.load(token_path(folder)))
    token_path_file = folder / "tiny.tokens.npz"
    token_path_file.unlink()

    calls = {"n": 0}
    original = encode_text.token_states

    def crash_in_the_third_part(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(encode_text, "token_states", crash_in_the_third_part)
    with pytest.raises(KeyboardInterrupt):
        encode_text.encode_tokens_dataset(str(folder), max_tokens=CAP, batch_size=2, log=lambda *a: None)
    assert not token_path_file.exists() and len(list((folder / "tiny.tokens.npz.parts").glob("part-*"))) == 2
    monkeypatch.setattr(encode_text, "token_states", original)
    messages = []
    encode_text.encode_tokens_dataset(str(folder), max_tokens=CAP, batch_size=2, log=messages.append)
    assert any("4 already encoded" in m for m in messages)
    got = dict(np.load(token_path_file))
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in expected)
    assert not (folder / "tiny.tokens.npz.parts").exists()


def test_other_modalities_of_the_token_file_are_kept(encoded, tmp_path):
    _, items, _ = encoded
    tokens = [asin for asin, _ in items[:3]]
    folder = make_dataset(tmp_path / "tiny", items[:3])
    image = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    write_tokens(token_path(folder), tokens[::-1], {"image": image[::-1]}, {"image": np.array([2, 0, 1])[::-1]})
    encode_text.encode_tokens_dataset(str(folder), max_tokens=CAP, log=lambda *a: None)
    item_tokens = read_tokens(token_path(folder))
    assert item_tokens.tokens.tolist() == tokens and item_tokens.lengths["image"].tolist() == [2, 0, 1]
    np.testing.assert_array_equal(item_tokens.states["image"][0], image[0])


def test_ensure_builds_when_missing_and_the_loader_aligns_by_token(encoded, tmp_path):
    _, items, _ = encoded
    tokens = [asin for asin, _ in items[:4]]
    folder = make_dataset(tmp_path / "tiny", items[:4], inter_items=tokens)
    write_features(folder / "tiny.features.npz", tokens, {"image": np.eye(4, 5)})
    messages = []
    assert ensure_text_tokens(str(folder), max_tokens=CAP, log=messages.append) == token_path(folder)
    assert any("loading the text encoder" in m for m in messages)
    id2token = ["[PAD]", *tokens[::-1]]
    tables = load_item_tokens(str(folder), id2token, ("text", "image"), max_text_tokens=CAP, log=messages.append)
    assert any("skipped" in m for m in messages)  # already there: not encoded again
    item_tokens = read_tokens(token_path(folder))
    text = tables["text"]
    assert text.mask.shape == (5, int(item_tokens.lengths["text"].max())) and not text.mask[0].any()
    row = tokens.index(id2token[1])
    n = int(item_tokens.lengths["text"][row])
    assert text.mask[1].sum() == n
    np.testing.assert_array_equal(text.vectors[1, :n].numpy(), item_tokens.states["text"][row, :n].astype(np.float32))
    assert tables["image"].vectors.shape == (5, 1, 5) and tables["image"].present[1:].all()  # the global vectors


def test_encode_clip_tokens_with_the_tiny_clip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from PIL import Image

    from conftest import tiny_clip_checkpoint

    encode_clip = load_script("encode_clip")
    checkpoint = tiny_clip_checkpoint(tmp_path)
    folder = tmp_path / "tiny"
    (folder / "images").mkdir(parents=True)
    tokens = ["B001", "B002", "B003"]
    (folder / "tiny.item").write_text("item_id:token\ttext:token_seq\n" + "".join(
        f"{t}\ta real product title {'and more words ' * i}!\n" for i, t in enumerate(tokens)))
    for i, token in enumerate(tokens[:2]):  # B003 has no image
        Image.new("RGB", (40, 30), (90 * i, 100, 200)).save(folder / "images" / f"{token}.jpg")
    kwargs = dict(model_name="tiny-test-clip", checkpoint=checkpoint, batch_size=2, device="cpu", log=lambda m: None)
    path = encode_clip.encode_tokens(folder, max_text_tokens=12, **kwargs)
    features = read_features(str(encode_clip.encode(folder, **kwargs)))
    item_tokens = read_tokens(str(path))
    image, text = item_tokens.states["image"].astype(np.float32), item_tokens.states["text"].astype(np.float32)
    assert image.shape == (3, 5, 32) and item_tokens.lengths["image"].tolist() == [5, 5, 0]  # class + 2 x 2 patches
    lengths = item_tokens.lengths["text"]
    assert text.shape == (3, 12, 32) and lengths[0] > 2 and lengths[0] < lengths[1] and lengths[2] == 12  # last: cut
    # The class token, projected, is the global image feature; the end-of-text token, projected, the text feature.
    model = open_clip.create_model("tiny-test-clip", pretrained=checkpoint).eval()
    with torch.no_grad():
        pooled_image = torch.nn.functional.normalize(torch.from_numpy(image[:2, 0]) @ model.visual.proj, dim=-1)
        eot = torch.from_numpy(text[[0, 1], lengths[:2] - 1])
        pooled_text = torch.nn.functional.normalize(eot @ model.text_projection, dim=-1)
    np.testing.assert_allclose(pooled_image.numpy(), features.tables["image"][:2], atol=1e-2)
    np.testing.assert_allclose(pooled_text.numpy(), features.tables["text"][:2], atol=1e-2)


def test_a_second_builder_waits_for_the_first_and_keeps_its_file(encoded, tmp_path):
    """torchrun ranks (or parallel cells) on a fresh clone: while one process builds a folder's tokens the
    other waits on the folder's lock, then finds the file up to date (it once raced into the same parts/)."""
    import fcntl
    import os
    import threading
    import time

    _, items, _ = encoded
    folder = make_dataset(tmp_path / "tiny", items[:3], inter_items=[a for a, _ in items[:3]])
    messages = []
    holder = os.open(folder, os.O_RDONLY)  # the first builder
    fcntl.flock(holder, fcntl.LOCK_EX)
    second = threading.Thread(target=ensure_text_tokens, args=(str(folder),),
                              kwargs={"max_tokens": CAP, "log": messages.append})
    second.start()
    for _ in range(200):
        if any("waiting" in m for m in messages):
            break
        time.sleep(0.05)
    assert any("waiting for it" in m for m in messages), messages
    assert not os.path.exists(token_path(folder) + ".parts")  # the second did not start encoding
    encode_text.encode_tokens_dataset(str(folder), max_tokens=CAP, log=lambda *a: None)
    os.close(holder)
    second.join(timeout=120)
    assert not second.is_alive()
    assert any("skipped" in m for m in messages) and not any("loading the text encoder" in m for m in messages)
