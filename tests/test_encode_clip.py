"""open_clip features offline: a tiny randomly initialised CLIP config, real local files, resume."""

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
from PIL import Image  # noqa: E402

from conftest import load_script, tiny_clip_checkpoint  # noqa: E402

encode_clip = load_script("encode_clip")


TOKENS = ["B001", "B002", "B003", "B004", "B005"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return tiny_clip_checkpoint(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "tiny"
    (folder / "images").mkdir(parents=True)
    lines = ["item_id:token\ttext:token_seq"] + [f"{t}\ta real product title {i}" for i, t in enumerate(TOKENS)]
    (folder / "tiny.item").write_text("\n".join(lines) + "\n")
    for i, token in enumerate(TOKENS[:3]):  # B004, B005 have no image
        Image.new("RGB", (40, 30), (40 * i, 100, 200)).save(folder / "images" / f"{token}.jpg")
    (folder / "images" / "B003.jpg").write_bytes(b"not an image")  # unreadable: counts as missing
    return folder


def test_features_are_written_with_missing_images_marked(dataset, tiny_checkpoint):
    path = encode_clip.encode(dataset, "tiny-test-clip", tiny_checkpoint, batch_size=2, device="cpu", log=lambda m: None)
    from recbole_mmm4rec.data.features import read_features

    features = read_features(str(path))
    assert list(features.tokens) == TOKENS
    assert features.tables["text"].shape == (5, 16) and features.tables["image"].shape == (5, 16)
    assert features.masks["image"].tolist() == [True, True, False, False, False]
    assert np.allclose(np.linalg.norm(features.tables["text"], axis=1), 1, atol=1e-2)  # normalised, float16
    with np.load(path) as raw:
        assert raw["text"].dtype == np.float16
    assert not (dataset / "tiny.features.partial.npz").exists()


def test_interrupted_run_resumes_to_the_same_result(dataset, tiny_checkpoint, tmp_path, monkeypatch):
    reference = encode_clip.encode(dataset, "tiny-test-clip", tiny_checkpoint, batch_size=2, device="cpu",
                                   log=lambda m: None)
    expected = dict(np.load(reference))
    reference.unlink()
    calls = {"n": 0}
    original = encode_clip._read_image

    def crash_on_third_batch(folder, token, preprocess):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(folder, token, preprocess)

    monkeypatch.setattr(encode_clip, "_read_image", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        encode_clip.encode(dataset, "tiny-test-clip", tiny_checkpoint, batch_size=2, device="cpu", save_every=1,
                           log=lambda m: None)
    assert (dataset / "tiny.features.partial.npz").exists()
    monkeypatch.setattr(encode_clip, "_read_image", original)
    messages = []
    path = encode_clip.encode(dataset, "tiny-test-clip", tiny_checkpoint, batch_size=2, device="cpu",
                              log=messages.append)
    assert "4 already encoded" in messages[0]
    got = dict(np.load(path))
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


def test_missing_weights_or_tokenizer_say_where_to_put_them(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded.*--checkpoint"):
        encode_clip.encode(dataset, "ViT-B-16-SigLIP", str(tmp_path / "absent.bin"), device="cpu")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        encode_clip.encode(dataset, f"local-dir:{tmp_path / 'absent'}", device="cpu")
