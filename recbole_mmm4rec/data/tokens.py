"""Token-level item features: one ``<dataset>.tokens.npz`` per dataset, next to its atomic files.

Models such as TAME read a *sequence* of vectors per item and modality (the token states of a text
encoder, the patch states of an image encoder) instead of the single vector of
``<dataset>.features.npz`` (``data/features.py``, unchanged). The two files live side by side.

File format (a NumPy ``.npz`` that loads with ``allow_pickle=False``):

``item_id``
    1-D unicode array ``[N]`` of item tokens, unique; the same tokens as the ``item_id``
    field of the dataset's atomic files.
``<modality>`` (e.g. ``text``, ``image``)
    3-D float array ``[N, T, d]``: ``<modality>[r, j]`` is the j-th token vector of item
    ``item_id[r]``; T (the token cap) and d may differ per modality; float16 on disk by
    default, float32 accepted.
``<modality>_lengths``
    1-D integer array ``[N]``: how many of the T positions of each item are real tokens,
    always the first ones. 0 = the item lacks the modality. Positions ``>= length`` are
    padding: written as zeros, and never read (the reader zeroes them again).

Rows are matched to RecBole's internal item ids **by token, never by position**
(:func:`align_tokens`). Every check names the file, the modality, the item and, for NaN/inf,
the token position.

What a model calls (``folder`` is RecBole's ``config["data_path"]``, i.e. ``<data_path>/<dataset>``)::

    tables = load_item_tokens(folder, dataset.field2id_token["item_id"], ("text", "image"), {"image": 512})
    tables["text"].vectors  # float32 [n_items, T, d], row 0 = padding item
    tables["text"].mask     # bool [n_items, T], True = real token
    tables["text"].present  # bool [n_items], the item has at least one token

:func:`load_item_tokens` builds the text tokens when they are missing
(:func:`ensure_text_tokens`: ``feature_extraction/encode_text.py --tokens`` in-process), and
gives a modality the token file lacks as a 1-token sequence of the global vectors of
``<dataset>.features.npz`` (:func:`tokens_from_features`), saying so in the log. Token files
are not committed (40-110 MB for the bundled datasets at 32 text tokens): they are built on demand
and git-ignored, like the resume parts ``<dataset>.tokens.npz.parts/`` of an interrupted build
(``data/token_parts.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch

from recbole_mmm4rec.data.features import (
    FEATURE_SUFFIX,
    TOKEN_KEY,
    FeatureFileError,
    ItemFeatures,
    _atomic_savez,
    _cast,
    _check_modality_name,
    _check_tokens,
    _load_arrays,
    _rows_for_ids,
    read_features,
    split_arrays,
)
from recbole_mmm4rec.data.on_demand import encode_text_script, one_builder

TOKENS_SUFFIX = ".tokens.npz"
LENGTHS_SUFFIX = "_lengths"
DEFAULT_MAX_TEXT_TOKENS = 32  # text tokens kept per item, [CLS] and [SEP] included
HOW_TO_MAKE = "python feature_extraction/encode_text.py FOLDER --tokens (README.md, 'Token-level features')"


@dataclass
class ItemTokens:
    """The content of one token file, validated; ``states`` as stored (float16 by default)."""

    path: str
    tokens: np.ndarray  # [N] str, the item tokens
    states: dict = field(default_factory=dict)  # modality -> float [N, T, d]
    lengths: dict = field(default_factory=dict)  # modality -> int64 [N], 0 = item lacks the modality

    @property
    def modalities(self) -> list:
        """Names of the modalities the file holds."""
        return list(self.states)


class TokenTable(NamedTuple):
    """One modality's token vectors, aligned to RecBole's internal item ids (row 0 = padding item)."""

    vectors: torch.Tensor  # float32 [n_items, T, d]; zeros where mask is False
    mask: torch.Tensor  # bool [n_items, T]; True = real token, always a prefix of each row

    @property
    def present(self) -> torch.Tensor:
        """bool [n_items]: the item has this modality (at least one real token)."""
        return self.mask.any(dim=1)


def token_path(folder: str) -> str:
    """The token file of a dataset folder ``<...>/<name>``: ``<...>/<name>/<name>.tokens.npz``."""
    folder = os.path.normpath(os.fspath(folder))
    return os.path.join(folder, os.path.basename(folder) + TOKENS_SUFFIX)


# ----------------------------------------------------------------------------- validation


def _real_positions(lengths: np.ndarray, n_positions: int) -> np.ndarray:
    """bool [N, T]: position j of row r is a real token (j < lengths[r])."""
    return np.arange(n_positions)[None, :] < lengths[:, None]


def _check_name(path: str, modality) -> None:
    """A modality name must be a valid npz key next to ``item_id`` and the ``_lengths`` arrays."""
    _check_modality_name(path, modality)
    if modality.endswith(LENGTHS_SUFFIX):
        raise FeatureFileError(f"Token file {path}: {modality!r} cannot be a modality name "
                               f"(names ending in '{LENGTHS_SUFFIX}' are reserved for the lengths)")


def _check_states(path: str, modality: str, states: np.ndarray, n_items: int) -> None:
    """States are a float array [N, T, d] with T >= 1."""
    if states.ndim != 3 or states.shape[1] < 1:
        raise FeatureFileError(f"Token file {path}: '{modality}' must be a 3-D array [items, tokens, dim] "
                               f"with at least one token position, got shape {states.shape}")
    if states.dtype.kind != "f":
        raise FeatureFileError(f"Token file {path}: '{modality}' must be a float array, got dtype {states.dtype}")
    if states.shape[0] != n_items:
        raise FeatureFileError(f"Token file {path}: '{modality}' has {states.shape[0]} rows but "
                               f"'{TOKEN_KEY}' has {n_items} tokens")


def _check_lengths(path: str, modality: str, lengths: np.ndarray, tokens: np.ndarray, n_positions: int) -> None:
    """Lengths are integers [N] in 0..T."""
    key = modality + LENGTHS_SUFFIX
    if lengths.dtype.kind not in "iu":
        raise FeatureFileError(f"Token file {path}: '{key}' must be an integer array, got dtype {lengths.dtype}")
    if lengths.shape != tokens.shape:
        raise FeatureFileError(f"Token file {path}: '{key}' must have shape {tokens.shape} like '{TOKEN_KEY}', "
                               f"got {lengths.shape}")
    for bad, rule in ((lengths < 0, "negative"), (lengths > n_positions, f"over the {n_positions} positions")):
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise FeatureFileError(f"Token file {path}: '{key}' is {rule} for {int(bad.sum())} item(s), "
                                   f"first: item {str(tokens[row])!r} has length {int(lengths[row])}")


def _check_finite(path: str, modality: str, states: np.ndarray, lengths: np.ndarray, tokens: np.ndarray) -> None:
    """Every real token vector must be free of NaN and inf."""
    bad = _real_positions(lengths, states.shape[1]) & ~np.isfinite(states).all(axis=2)  # [N, T]
    if bad.any():
        rows, positions = np.nonzero(bad)
        raise FeatureFileError(f"Token file {path}: '{modality}' has NaN or inf values in {len(rows)} token "
                               f"vector(s) of {len(np.unique(rows))} item(s), first: item {str(tokens[rows[0]])!r}, "
                               f"token position {int(positions[0])}")


def _check_structure(path: str, tokens: np.ndarray, states: Mapping, lengths: Mapping) -> None:
    """Names, shapes, dtypes and lengths of every modality (everything but the values)."""
    _check_tokens(path, tokens)
    for modality in lengths:
        if modality not in states:
            raise FeatureFileError(f"Token file {path}: '{modality}{LENGTHS_SUFFIX}' is given but there is "
                                   f"no '{modality}' array")
    for modality, table in states.items():
        _check_name(path, modality)
        if modality not in lengths:
            raise FeatureFileError(f"Token file {path}: '{modality}' has no '{modality}{LENGTHS_SUFFIX}' array "
                                   "(how many of its positions are real tokens)")
        _check_states(path, modality, table, len(tokens))
        _check_lengths(path, modality, lengths[modality], tokens, table.shape[1])


def _validate(path: str, tokens: np.ndarray, states: Mapping, lengths: Mapping) -> None:
    """Every check that both reading and writing apply."""
    _check_structure(path, tokens, states, lengths)
    for modality, table in states.items():
        _check_finite(path, modality, table, lengths[modality], tokens)


# ----------------------------------------------------------------------------- write


def write_tokens(
    path: str,
    tokens: Sequence[str],
    states: Mapping[str, np.ndarray],
    lengths: Mapping[str, np.ndarray],
    dtype=np.float16,
) -> None:
    """Validate and write a token file atomically (temp file, fsync, ``os.replace``).

    ``states`` maps modality -> ``[N, T, d]`` whose row r belongs to ``tokens[r]``;
    ``lengths`` maps each modality -> ``[N]`` integers, the real tokens of each row (0 = the
    item lacks the modality). Padded positions are written as zeros; values are stored as
    ``dtype`` (float16 by default), and finite values that overflow it are rejected.
    """
    path = os.fspath(path)
    tokens = np.asarray([str(t) for t in tokens], dtype=str)
    raw = {}
    for modality, table in states.items():
        table = np.array(table, copy=True)
        raw[modality] = table.astype(np.float32) if table.dtype.kind in "iu" else table
    counts = {m: np.asarray(v) for m, v in lengths.items()}
    _check_structure(path, tokens, raw, counts)

    arrays = {TOKEN_KEY: tokens}
    for modality, table in raw.items():
        n, n_positions, dim = table.shape
        table[~_real_positions(counts[modality], n_positions)] = 0
        flat = _cast(path, modality, table.reshape(n, n_positions * dim), dtype, tokens)  # overflow named per item
        arrays[modality] = flat.reshape(n, n_positions, dim)
        arrays[modality + LENGTHS_SUFFIX] = counts[modality].astype(np.int32)
    _validate(path, tokens, {m: arrays[m] for m in raw}, counts)
    _atomic_savez(path, arrays)


# ----------------------------------------------------------------------------- read


def read_tokens(path: str) -> ItemTokens:
    """Read and validate a token file; states stay in their stored dtype, lengths become int64."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FeatureFileError(f"Token file {path} is missing. Make it with {HOW_TO_MAKE}")
    try:
        arrays = _load_arrays(path)
    except FeatureFileError as err:
        raise FeatureFileError(f"Token file {path} cannot be read as an .npz archive of plain arrays "
                               f"({err.__cause__!r}); rebuild it with {HOW_TO_MAKE}") from err
    if TOKEN_KEY not in arrays:
        raise FeatureFileError(f"Token file {path} has no '{TOKEN_KEY}' array (the item tokens)")
    tokens = arrays.pop(TOKEN_KEY)
    states, lengths = split_arrays(arrays, LENGTHS_SUFFIX)
    _validate(path, tokens, states, lengths)
    return ItemTokens(path=path, tokens=tokens, states=states,
                      lengths={m: v.astype(np.int64) for m, v in lengths.items()})


def tokens_from_features(features: ItemFeatures, modalities: Optional[Sequence[str]] = None) -> ItemTokens:
    """The global vectors of a feature file as 1-token sequences: ``[N, 1, d]``, length 1 where present.

    ``modalities`` defaults to all of the file's. Errors about the result name the feature file.
    """
    modalities = features.modalities if modalities is None else list(modalities)
    result = ItemTokens(path=features.path, tokens=features.tokens)
    for modality in modalities:
        result.states[modality] = features.tables[modality][:, None, :]  # [N, 1, d]
        result.lengths[modality] = features.masks[modality].astype(np.int64)
    return result


# ----------------------------------------------------------------------------- align


def absent_table(n_items: int, dim: int) -> TokenTable:
    """A modality no item has: ``[n_items, 1, dim]`` zeros, nothing present."""
    return TokenTable(torch.zeros(n_items, 1, dim), torch.zeros(n_items, 1, dtype=torch.bool))


def align_tokens(
    item_tokens: ItemTokens,
    id2token: Sequence[str],
    modalities: Sequence[str],
    expected_dims: Optional[Mapping[str, int]] = None,
) -> dict:
    """Order token states by RecBole's internal item ids: ``{modality: TokenTable}``.

    ``id2token`` lists the item token of each internal id, index 0 being RecBole's ``'[PAD]'``
    (``dataset.field2id_token['item_id']``). Row 0 (padding) has no tokens. T is the longest
    sequence among the dataset's items (token positions that none of them uses are dropped).
    A modality the file lacks altogether gives ``[n_items, 1, d]`` zeros with nothing present,
    d the expected dimension if given, else 1. Items in the file but not in the dataset are
    ignored; items of the dataset missing from the file are an error listing some of them.
    """
    if isinstance(modalities, str):
        modalities = (modalities,)
    expected_dims = dict(expected_dims or {})
    rows = _rows_for_ids(item_tokens, id2token)  # [n_items - 1] file rows of ids 1..n-1
    n_items = len(rows) + 1
    aligned = {}
    for modality in modalities:
        expected = expected_dims.get(modality)
        if modality not in item_tokens.states:
            aligned[modality] = absent_table(n_items, 1 if expected is None else int(expected))
            continue
        source = item_tokens.states[modality]
        if expected is not None and source.shape[2] != int(expected):
            raise FeatureFileError(f"Token file {item_tokens.path} has {modality} tokens of dimension "
                                   f"{source.shape[2]}, expected {int(expected)}")
        lengths = np.zeros(n_items, dtype=np.int64)
        lengths[1:] = item_tokens.lengths[modality][rows]
        n_positions = max(1, int(lengths.max()))
        vectors = np.zeros((n_items, n_positions, source.shape[2]), dtype=np.float32)
        vectors[1:] = source[rows, :n_positions]
        mask = _real_positions(lengths, n_positions)
        vectors[~mask] = 0.0
        aligned[modality] = TokenTable(torch.from_numpy(vectors), torch.from_numpy(mask))
    return aligned


# ----------------------------------------------------------------------------- build and load


def ensure_text_tokens(folder: str, max_tokens: int = DEFAULT_MAX_TEXT_TOKENS, log: Callable = print) -> str:
    """Build the text tokens of ``folder`` unless its token file already has them for exactly its items.

    Runs ``feature_extraction/encode_text.py --tokens --max-tokens max_tokens`` in-process
    (default encoder: the offline all-MiniLM-L6-v2; a log line and a progress bar; an interrupted
    run resumes). Up to date = a ``text`` entry with ``max_tokens`` positions for exactly the
    items of ``NAME.item``. Returns the token file's path.
    """
    encode_text = encode_text_script("text tokens")
    try:
        with one_builder(folder, log):
            encode_text.encode_tokens_dataset(folder, max_tokens=max_tokens, log=log)
    except encode_text.EncodeError as err:
        raise FeatureFileError(f"Cannot build the text tokens of {folder}: {err}") from err
    return token_path(folder)


def load_item_tokens(
    folder: str,
    id2token: Sequence[str],
    modalities: Sequence[str],
    expected_dims: Optional[Mapping[str, int]] = None,
    max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
    log: Callable = print,
) -> dict:
    """``{modality: TokenTable}`` of a dataset folder (RecBole's ``config["data_path"]``), by item token.

    - ``text`` (when asked for) is built first if missing (:func:`ensure_text_tokens`).
    - A modality of the token file comes from it.
    - A modality the token file lacks but ``<name>.features.npz`` has is a 1-token sequence of
      its global vectors (:func:`tokens_from_features`), logged as such.
    - A modality neither file has is absent for every item (``TokenTable.present`` all False).
    """
    if isinstance(modalities, str):
        modalities = (modalities,)
    path = ensure_text_tokens(folder, max_text_tokens, log) if "text" in modalities else token_path(folder)
    file_tokens = read_tokens(path) if os.path.isfile(path) else None
    feature_file = os.path.join(folder, os.path.basename(os.path.normpath(folder)) + FEATURE_SUFFIX)
    global_features = None
    tables = {}
    for modality in modalities:
        source = file_tokens if file_tokens is not None and modality in file_tokens.states else None
        if source is None and os.path.isfile(feature_file):
            global_features = global_features if global_features is not None else read_features(feature_file)
            if modality in global_features.tables:
                source = tokens_from_features(global_features, [modality])
                log(f"{modality} tokens: {path} has none; using the global {modality} vectors of {feature_file} "
                    "as 1-token sequences")
        if source is None:
            dim = int((expected_dims or {}).get(modality, 1))
            tables[modality] = absent_table(len(id2token), dim)
        else:
            tables[modality] = align_tokens(source, id2token, [modality], expected_dims)[modality]
        table = tables[modality]
        log(f"{modality} tokens: dimension {table.vectors.shape[2]}, up to {table.vectors.shape[1]} per item, "
            f"{int(table.present.sum())} of {len(table.present) - 1} items present")
    return tables
