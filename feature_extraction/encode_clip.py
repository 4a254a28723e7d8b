"""Text and image features of a dataset's items with an open_clip model (SigLIP by default), offline.

    python feature_extraction/encode_clip.py atomic_data/mydata --checkpoint PATH/open_clip_model.bin \\
        --tokenizer PATH/tokenizer_dir [--model ViT-B-16-SigLIP] [--batch-size 64] [--device cuda]
    python feature_extraction/encode_clip.py atomic_data/mydata --model local-dir:PATH/model_dir

Reads ``<name>.item`` (``item_id`` and ``text``) and the images ``images/<item_id>.<ext>`` that
``download_images.py`` writes, and writes ``text`` and ``image`` tables (L2-normalised embeddings, the
model's joint space) to ``<name>.features.npz`` (format: ``recbole_mmm4rec/data/features.py``,
float16, written atomically). Items without a readable image are marked missing (``image_mask``),
never given a zero vector that looks like a real one.

Nothing is downloaded: the weights come from ``--checkpoint`` (a file open_clip can load for
``--model``) or from an open_clip ``local-dir:`` folder (``open_clip_config.json``, weights and
tokenizer files). SigLIP's tokenizer is a Hugging Face tokenizer: give its local folder with
``--tokenizer`` (configs using open_clip's bundled BPE tokenizer need none). Long runs resume: every
``--save-every`` batches the finished items go to ``<name>.features.partial.npz``, and a new run
starts after them.

``--tokens`` writes token-level features to ``<name>.tokens.npz`` instead (format:
``recbole_mmm4rec/data/tokens.py``, float16, atomically): ``image`` = the vision tower's last layer
after its final LayerNorm, class token first, then every patch (e.g. 1 + 49 for ViT-B/32 at 224 px;
unprojected, the tower's width; length 0 for items without a readable image), and ``text`` = the
text tower's last layer after its final LayerNorm over the real tokens (start, words, end; padding
dropped), the first ``--max-text-tokens``. Resume points: ``<name>.tokens.npz.parts/``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any Hugging Face import: never download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:
    import recbole_mmm4rec  # noqa: F401  (compat: torchvision beside a CPU torch)
except ImportError:  # run from a source tree without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from recbole_mmm4rec.data.features import FEATURE_SUFFIX, write_features  # noqa: E402
from recbole_mmm4rec.data.token_parts import TokenParts  # noqa: E402
from recbole_mmm4rec.data.tokens import DEFAULT_MAX_TEXT_TOKENS, token_path, write_tokens  # noqa: E402

PARTIAL_SUFFIX = ".features.partial.npz"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
WHERE_TO_PUT_WEIGHTS = (
    "Nothing is downloaded at run time: pass --checkpoint with the open_clip weights of --model "
    "(for ViT-B-16-SigLIP: open_clip_pytorch_model.bin of timm/ViT-B-16-SigLIP) or "
    "--model local-dir:DIR with open_clip_config.json, the weights and the tokenizer files in DIR"
)


def load_items(folder: Path):
    """(tokens, texts) from ``<name>.item``: the ``item_id`` and ``text`` columns."""
    path = folder / f"{folder.name}.item"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: encode_clip reads item texts from it")
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        names = [field.split(":")[0] for field in header]
        if "item_id" not in names or "text" not in names:
            raise ValueError(f"{path}: needs item_id and text columns, found {header}")
        i, t = names.index("item_id"), names.index("text")
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return [r[i] for r in rows], [r[t] if t < len(r) else "" for r in rows]


def find_image(folder: Path, token: str):
    for ext in IMAGE_EXTENSIONS:
        path = folder / "images" / f"{token}{ext}"
        if path.is_file():
            return path
    return None


def load_encoder(model_name, checkpoint, tokenizer_dir, device):
    """(model, preprocess, tokenizer) from local files only; a clear error says what is missing."""
    import open_clip

    if model_name.startswith("local-dir:"):
        if not Path(model_name[len("local-dir:"):]).is_dir():
            raise FileNotFoundError(f"--model {model_name}: no such folder. {WHERE_TO_PUT_WEIGHTS}")
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, device=device)
        return model.eval(), preprocess, open_clip.get_tokenizer(model_name)
    if checkpoint is None or not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such file. {WHERE_TO_PUT_WEIGHTS}")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(checkpoint), device=device)
    text_cfg = open_clip.get_model_config(model_name)["text_cfg"]
    if tokenizer_dir is not None:
        if not Path(tokenizer_dir).is_dir():
            raise FileNotFoundError(f"--tokenizer {tokenizer_dir}: no such folder (a local Hugging Face tokenizer)")
        tokenizer = open_clip.tokenizer.HFTokenizer(
            str(tokenizer_dir), context_length=text_cfg.get("context_length", 77), **text_cfg.get("tokenizer_kwargs", {})
        )
    elif "hf_tokenizer_name" in text_cfg:
        raise FileNotFoundError(
            f"{model_name} uses the Hugging Face tokenizer {text_cfg['hf_tokenizer_name']}: pass its local folder "
            "with --tokenizer (nothing is downloaded at run time)"
        )
    else:
        tokenizer = open_clip.get_tokenizer(model_name)
    return model.eval(), preprocess, tokenizer


def _read_image(folder, token, preprocess):
    """The preprocessed image of an item, or None when it has none or the file is unreadable."""
    from PIL import Image

    path = find_image(folder, token)
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            return preprocess(image.convert("RGB"))
    except Exception:  # unreadable file: the item counts as having no image
        return None


def encode(folder, model_name="ViT-B-16-SigLIP", checkpoint=None, tokenizer_dir=None, batch_size=64,
           device=None, save_every=20, log=print):
    """Encode every item of ``folder``; returns the path of the feature file written."""
    import torch
    import torch.nn.functional as F

    folder = Path(folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokens, texts = load_items(folder)
    if not tokens:
        raise ValueError(f"{folder}: the .item file lists no items")
    model, preprocess, tokenizer = load_encoder(model_name, checkpoint, tokenizer_dir, device)
    partial = folder / f"{folder.name}{PARTIAL_SUFFIX}"
    done = _load_partial(partial, tokens)
    start = sum(len(chunk) for chunk in done["tokens"])
    log(f"{len(tokens)} items" + (f", {start} already encoded (resuming from {partial})" if start else ""))
    batches = range(start, len(tokens), batch_size)
    for n, first in enumerate(tqdm(batches, desc="encode", unit="batch"), 1):
        chunk = slice(first, first + batch_size)
        images = [_read_image(folder, token, preprocess) for token in tokens[chunk]]
        present = np.array([image is not None for image in images])
        with torch.no_grad():
            text = F.normalize(model.encode_text(tokenizer(texts[chunk]).to(device)), dim=-1).float().cpu().numpy()
            image = np.zeros((len(images), text.shape[1]), dtype=np.float32)
            if present.any():
                stacked = torch.stack([i for i in images if i is not None]).to(device)
                image[present] = F.normalize(model.encode_image(stacked), dim=-1).float().cpu().numpy()
        for key, value in (("tokens", tokens[chunk]), ("text", text), ("image", image), ("image_mask", present)):
            done[key].append(np.asarray(value))
        if n % save_every == 0:
            _save_partial(partial, done)
    tables = {k: np.concatenate(done[k]) for k in ("text", "image")}
    masks = {"image": np.concatenate(done["image_mask"])}
    path = folder / f"{folder.name}{FEATURE_SUFFIX}"
    write_features(str(path), tokens, tables, masks)
    if partial.exists():
        partial.unlink()
    coverage = masks["image"].mean() if len(tokens) else 0.0
    log(f"wrote {path}: text {tables['text'].shape}, image coverage {masks['image'].sum()}/{len(tokens)} "
        f"({coverage:.1%})")
    return path


def _load_partial(path: Path, tokens):
    """The finished prefix of a previous run, if it belongs to the same items."""
    empty = {"tokens": [], "text": [], "image": [], "image_mask": []}
    if not path.is_file():
        return empty
    with np.load(path, allow_pickle=False) as saved:
        done_tokens = list(saved["tokens"])
        if done_tokens != list(tokens[:len(done_tokens)]):
            return empty  # the item list changed: start over
        return {k: [saved[k]] for k in empty}


def _save_partial(path: Path, done):
    arrays = {k: np.concatenate(v) for k, v in done.items()}
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


# ----------------------------------------------------------------------------- token states (--tokens)


def _pad_id(tokenizer) -> int:
    """The id that pads token sequences: the Hugging Face tokenizer's, or 0 (open_clip's own BPE tokenizer)."""
    pad_id = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None)
    return 0 if pad_id is None else int(pad_id)


def _text_lengths(ids, pad_id: int):
    """int [B]: 1 + the last position that is not padding (a real token may share the pad id, e.g. '!' = 0)."""
    import torch

    positions = torch.arange(1, ids.shape[1] + 1, device=ids.device)
    return ((ids != pad_id) * positions).max(dim=1).values


def _image_tokens(model, images):
    """float [B, T_v, W]: the vision tower's last layer after its final norm, class/prefix tokens first."""
    import torch

    out = model.forward_intermediates(image=images, image_indices=1, normalize_intermediates=True,
                                      intermediates_only=True, image_output_fmt="NLC", image_output_extra_tokens=True)
    patches = out["image_intermediates"][-1]  # [B, P, W]
    prefix = out.get("image_intermediates_prefix", [patches[:, :0]])[-1]  # [B, 1, W] class token, or none
    return torch.cat([prefix, patches], dim=1)


def _token_batch(model, tokenizer, texts, images, image_shape, max_text_tokens, device):
    """States (float16) and lengths of one batch: ``({"text": [B, Tt, Wt], "image": [B, Tv, Wv]}, lengths)``."""
    import torch

    ids = tokenizer(texts).to(device)  # [B, context]
    with torch.no_grad():
        out = model.forward_intermediates(text=ids, text_indices=1, normalize_intermediates=True,
                                          intermediates_only=True)
        text = out["text_intermediates"][-1][:, :max_text_tokens]  # [B, Tt, Wt]
        present = np.array([image is not None for image in images])
        image = np.zeros((len(images), *image_shape), dtype=np.float16)
        if present.any():
            stacked = torch.stack([i for i in images if i is not None]).to(device)
            image[present] = _image_tokens(model, stacked).float().cpu().numpy()
    states = {"text": text.float().cpu().numpy().astype(np.float16), "image": image}
    lengths = {"text": _text_lengths(ids, _pad_id(tokenizer)).clamp(max=text.shape[1]).cpu().numpy(),
               "image": np.where(present, image_shape[0], 0)}
    return states, lengths


def _concatenate(batches: list) -> dict:
    """``[{modality: array}, ...]`` -> ``{modality: the arrays concatenated}``."""
    return {modality: np.concatenate([batch[modality] for batch in batches]) for modality in batches[0]}


def encode_tokens(folder, model_name="ViT-B-16-SigLIP", checkpoint=None, tokenizer_dir=None, batch_size=64,
                  device=None, save_every=20, max_text_tokens=DEFAULT_MAX_TEXT_TOKENS, log=print):
    """Token-level text and image features of every item of ``folder`` (see the module's docstring).

    Returns the path of the token file written. An interrupted run resumes from its parts.
    """
    import torch
    from PIL import Image

    folder = Path(folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokens, texts = load_items(folder)
    if not tokens:
        raise ValueError(f"{folder}: the .item file lists no items")
    model, preprocess, tokenizer = load_encoder(model_name, checkpoint, tokenizer_dir, device)
    with torch.no_grad():  # (T_v, W_v) of every image, from a blank one
        image_shape = tuple(_image_tokens(model, preprocess(Image.new("RGB", (8, 8)))[None].to(device)).shape[1:])
    path = Path(token_path(folder))
    parts = TokenParts(str(path), {"model": model_name, "checkpoint": str(checkpoint),
                                   "tokenizer": str(tokenizer_dir), "max_text_tokens": max_text_tokens}, log)
    done = parts.done()
    todo = [i for i, token in enumerate(tokens) if token not in done]
    log(f"{len(tokens)} items, image tokens {image_shape}" + (f", {len(tokens) - len(todo)} already encoded "
                                                             f"(resuming from {parts.folder})" if done else ""))
    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    part_tokens, part_states, part_lengths = [], [], []  # the batches since the last resume point
    for n, batch in enumerate(tqdm(batches, desc="encode tokens", unit="batch"), 1):
        images = [_read_image(folder, tokens[i], preprocess) for i in batch]
        states, lengths = _token_batch(model, tokenizer, [texts[i] for i in batch], images, image_shape,
                                       max_text_tokens, device)
        part_tokens += [tokens[i] for i in batch]
        part_states.append(states)
        part_lengths.append(lengths)
        if n % save_every == 0 or n == len(batches):
            parts.save(part_tokens, _concatenate(part_states), _concatenate(part_lengths))
            part_tokens, part_states, part_lengths = [], [], []
    states, lengths = parts.assemble(tokens)
    write_tokens(str(path), tokens, states, lengths)
    parts.remove()
    log(f"wrote {path}: text {states['text'].shape}, image {states['image'].shape}, image coverage "
        f"{int((lengths['image'] > 0).sum())}/{len(tokens)}")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a dataset folder with <name>.item (and images/ from download_images.py)")
    parser.add_argument("--model", default="ViT-B-16-SigLIP", help="open_clip model name or local-dir:DIR")
    parser.add_argument("--checkpoint", default=None, help="local open_clip weights file for --model")
    parser.add_argument("--tokenizer", default=None, help="local Hugging Face tokenizer folder (SigLIP)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--save-every", type=int, default=20, help="batches between resume points")
    parser.add_argument("--tokens", action="store_true",
                        help="write token-level features (image patches, text tokens) to <name>.tokens.npz")
    parser.add_argument("--max-text-tokens", type=int, default=DEFAULT_MAX_TEXT_TOKENS,
                        help=f"--tokens: text tokens kept per item (default {DEFAULT_MAX_TEXT_TOKENS})")
    args = parser.parse_args(argv)
    try:
        if args.tokens:
            encode_tokens(args.folder, args.model, args.checkpoint, args.tokenizer, args.batch_size, args.device,
                          args.save_every, args.max_text_tokens)
        else:
            encode(args.folder, args.model, args.checkpoint, args.tokenizer, args.batch_size, args.device,
                   args.save_every)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"encode_clip: error: {error}\n")


if __name__ == "__main__":
    main()
