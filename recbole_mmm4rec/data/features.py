"""Item feature files: one ``<dataset>.features.npz`` per dataset, next to its atomic files.

File format (a NumPy ``.npz`` that loads with ``allow_pickle=False``):

``item_id``
    1-D unicode array of item tokens, unique; the same tokens as the ``item_id``
    field of the dataset's atomic files.
``<modality>`` (e.g. ``text``, ``image``)
    2-D float array ``[N, d]``, row ``r`` belongs to ``item_id[r]``. Any dimension
    per modality; float16 on disk by default, float32 accepted. A modality may be
    absent altogether (e.g. a dataset without images).
``<modality>_mask`` (optional)
    1-D bool ``[N]``: True = the item has this modality. Rows marked False are
    stored as zeros and never read. No mask = every item has the modality.

Rows are matched to RecBole's internal item ids **by token, never by position**
(:func:`align_features`), so the file's row order does not matter.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

FEATURE_SUFFIX = ".features.npz"
TOKEN_KEY = "item_id"
MASK_SUFFIX = "_mask"
HOW_TO_MAKE = (
    "README.md, section 'Feature files', says how to make one "
    "(feature_extraction/import_unisrec.py does it for UniSRec/MISSRec-layout data)"
)
_SHOW = 5  # how many offending tokens an error message lists


class FeatureFileError(ValueError):
    """A feature file is missing, unreadable, malformed, or does not fit the dataset."""


@dataclass
class ItemFeatures:
    """The content of one feature file, validated, tables in float32."""

    path: str
    tokens: np.ndarray  # [N] str
    tables: dict = field(default_factory=dict)  # modality -> float32 [N, d]
    masks: dict = field(default_factory=dict)  # modality -> bool [N]

    @property
    def modalities(self) -> list:
        """Names of the modalities the file holds."""
        return list(self.tables)


def feature_path(data_path: str, dataset: str) -> str:
    """Where the feature file of ``dataset`` lives: ``<data_path>/<dataset>/<dataset>.features.npz``."""
    return os.path.join(data_path, dataset, dataset + FEATURE_SUFFIX)


# ----------------------------------------------------------------------------- validation


def _first_tokens(tokens: Sequence[str]) -> str:
    """``'a', 'b', 'c' …`` for error messages: the first few tokens."""
    shown = ", ".join(repr(str(t)) for t in list(tokens)[:_SHOW])
    return shown + (", …" if len(tokens) > _SHOW else "")


def _check_tokens(path: str, tokens: np.ndarray) -> None:
    """Tokens must be a 1-D unicode array without duplicates."""
    if tokens.ndim != 1 or tokens.dtype.kind != "U":
        raise FeatureFileError(
            f"Feature file {path}: '{TOKEN_KEY}' must be a 1-D unicode string array, "
            f"got shape {tokens.shape} dtype {tokens.dtype}"
        )
    uniques, counts = np.unique(tokens, return_counts=True)
    if len(uniques) != len(tokens):
        dups = uniques[counts > 1]
        raise FeatureFileError(
            f"Feature file {path}: '{TOKEN_KEY}' has {len(dups)} duplicate item token(s), "
            f"e.g. {_first_tokens(dups)}"
        )


def _check_modality_name(path: str, modality) -> None:
    """A modality name must be usable as an npz key next to ``item_id`` and the masks."""
    if not isinstance(modality, str) or not modality:
        raise FeatureFileError(f"Feature file {path}: modality names must be non-empty strings, got {modality!r}")
    if modality == TOKEN_KEY or modality.endswith(MASK_SUFFIX) or "/" in modality:
        raise FeatureFileError(
            f"Feature file {path}: {modality!r} cannot be a modality name "
            f"(reserved: '{TOKEN_KEY}', names ending in '{MASK_SUFFIX}', names with '/')"
        )


def _check_table(path: str, modality: str, table: np.ndarray, n_items: int) -> None:
    """A table is a 2-D float array with one row per token."""
    if table.ndim != 2:
        raise FeatureFileError(
            f"Feature file {path}: '{modality}' must be a 2-D array [items, dim], got shape {table.shape}"
        )
    if table.dtype.kind != "f":
        raise FeatureFileError(f"Feature file {path}: '{modality}' must be a float array, got dtype {table.dtype}")
    if table.shape[0] != n_items:
        raise FeatureFileError(
            f"Feature file {path}: '{modality}' has {table.shape[0]} rows but '{TOKEN_KEY}' has {n_items} tokens"
        )


def _check_mask(path: str, modality: str, mask: np.ndarray, n_items: int) -> None:
    """A mask is a 1-D bool array with one entry per token."""
    key = modality + MASK_SUFFIX
    if mask.dtype != np.bool_:
        raise FeatureFileError(f"Feature file {path}: '{key}' must be a bool array, got dtype {mask.dtype}")
    if mask.ndim != 1 or mask.shape[0] != n_items:
        raise FeatureFileError(
            f"Feature file {path}: '{key}' must have shape ({n_items},) like '{TOKEN_KEY}', got {mask.shape}"
        )


def _check_finite(path: str, modality: str, table: np.ndarray, mask: np.ndarray, tokens: np.ndarray) -> None:
    """Every present row must be free of NaN and inf."""
    bad = mask & ~np.isfinite(table).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise FeatureFileError(
            f"Feature file {path}: '{modality}' has NaN or inf values for {len(rows)} item(s), "
            f"first: item {str(tokens[rows[0]])!r}"
        )


def _validate(path: str, tokens: np.ndarray, tables: dict, masks: dict) -> None:
    """Every check that both reading and writing apply."""
    _check_tokens(path, tokens)
    for key in masks:
        if key not in tables:
            raise FeatureFileError(f"Feature file {path}: a mask is given for '{key}' but there is no '{key}' table")
    for modality, table in tables.items():
        _check_modality_name(path, modality)
        _check_table(path, modality, table, len(tokens))
        if modality in masks:
            _check_mask(path, modality, masks[modality], len(tokens))
        mask = masks.get(modality, np.ones(len(tokens), dtype=bool))
        _check_finite(path, modality, table, mask, tokens)


# ----------------------------------------------------------------------------- write


def write_features(
    path: str,
    tokens: Sequence[str],
    tables: Mapping[str, np.ndarray],
    masks: Optional[Mapping[str, np.ndarray]] = None,
    dtype=np.float16,
) -> None:
    """Validate and write a feature file atomically.

    ``tables`` maps modality -> ``[N, d]`` array whose row r belongs to ``tokens[r]``;
    ``masks`` optionally maps modality -> ``[N]`` bool (False = item lacks the modality;
    those rows are written as zeros). Tables are stored as ``dtype`` (float16 by
    default); finite values that overflow it are rejected.

    The file is written to a temporary file in the same folder, flushed, fsynced and
    renamed over ``path``: a failure never leaves a half-written file at ``path``.
    """
    path = os.fspath(path)
    tokens = np.asarray([str(t) for t in tokens], dtype=str)
    masks = {m: np.asarray(v) for m, v in (masks or {}).items()}
    arrays = {TOKEN_KEY: tokens}
    stored_tables = {}
    for modality, table in tables.items():
        _check_modality_name(path, modality)
        table = np.array(table, copy=True)
        if table.dtype.kind not in "fiu":
            raise FeatureFileError(f"Feature file {path}: '{modality}' must be numeric, got dtype {table.dtype}")
        if modality in masks and masks[modality].shape == table.shape[:1]:
            table[~masks[modality].astype(bool)] = 0  # missing rows are stored as zeros
        stored_tables[modality] = _cast(path, modality, table, dtype, tokens)
    _validate(path, tokens, stored_tables, masks)
    for modality, table in stored_tables.items():
        arrays[modality] = table
        if modality in masks:
            arrays[modality + MASK_SUFFIX] = masks[modality]
    _atomic_savez(path, arrays)


def _current_umask() -> int:
    """The process umask (reading it requires setting it; it is restored at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _cast(path: str, modality: str, table: np.ndarray, dtype, tokens: np.ndarray) -> np.ndarray:
    """A copy of ``table`` as ``dtype``; finite values that overflow it are an error."""
    with np.errstate(over="ignore", invalid="ignore"):
        stored = table.astype(dtype)
    if stored.dtype.kind == "f" and table.ndim == 2 and len(table) == len(tokens):
        overflow = np.isfinite(table).all(axis=1) & ~np.isfinite(stored).all(axis=1)
        if overflow.any():
            raise FeatureFileError(
                f"Feature file {path}: '{modality}' values of item {str(tokens[np.flatnonzero(overflow)[0]])!r} "
                f"do not fit {np.dtype(dtype).name}; scale the features or write with dtype=np.float32"
            )
    return stored


def _atomic_savez(path: str, arrays: dict) -> None:
    """``np.savez`` into a temp file beside ``path``, fsync, then ``os.replace`` it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


# ----------------------------------------------------------------------------- read


def _load_arrays(path: str) -> dict:
    """All arrays of the npz, loaded eagerly; any read problem becomes a FeatureFileError."""
    if not os.path.isfile(path):
        raise FeatureFileError(f"Feature file {path} is missing: every dataset needs one. {HOW_TO_MAKE}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"it holds a single {type(loaded).__name__}, not an .npz archive of named arrays")
        with loaded as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise FeatureFileError(
            f"Feature file {path} cannot be read as an .npz archive of plain arrays "
            f"({type(err).__name__}: {err}). Regenerate it: {HOW_TO_MAKE}"
        ) from err


def split_arrays(arrays: dict, suffix: str) -> tuple:
    """{name: array} -> ({modality: array}, {modality: array of "<modality><suffix>"})."""
    extra = {k[: -len(suffix)]: v for k, v in arrays.items() if k.endswith(suffix)}
    return {k: v for k, v in arrays.items() if not k.endswith(suffix)}, extra


def read_features(path: str) -> ItemFeatures:
    """Read and validate a feature file; tables come back as float32, masked-out rows as zeros."""
    path = os.fspath(path)
    arrays = _load_arrays(path)
    if TOKEN_KEY not in arrays:
        raise FeatureFileError(f"Feature file {path} has no '{TOKEN_KEY}' array (the item tokens)")
    tokens = arrays.pop(TOKEN_KEY)
    tables, masks = split_arrays(arrays, MASK_SUFFIX)
    _validate(path, tokens, tables, masks)

    features = ItemFeatures(path=path, tokens=tokens)
    for modality, table in tables.items():
        mask = masks.get(modality, np.ones(len(tokens), dtype=bool))
        table = table.astype(np.float32)
        table[~mask] = 0.0
        features.tables[modality] = table
        features.masks[modality] = mask.copy()
    return features


# ----------------------------------------------------------------------------- align


def _rows_for_ids(features: ItemFeatures, id2token: Sequence[str]) -> np.ndarray:
    """File row of each internal item id 1..n-1 (id 0 is padding), matched by token."""
    row_of = {str(token): row for row, token in enumerate(features.tokens)}
    wanted = [str(token) for token in list(id2token)[1:]]
    missing = [token for token in wanted if token not in row_of]
    if missing:
        raise FeatureFileError(
            f"Feature file {features.path} has no row for {len(missing)} of the dataset's "
            f"{len(wanted)} item(s): {_first_tokens(missing)}; regenerate the file for this dataset"
        )
    return np.array([row_of[token] for token in wanted], dtype=np.int64)


def align_features(
    features: ItemFeatures,
    id2token: Sequence[str],
    modalities: Sequence[str],
    expected_dims: Optional[Mapping[str, int]] = None,
) -> dict:
    """Order feature tables by RecBole's internal item ids.

    ``id2token`` lists the item token of each internal id; index 0 is RecBole's
    ``'[PAD]'`` (``dataset.field2id_token['item_id']``). Returns
    ``{modality: (table float32 [n_items, d], present bool [n_items])}`` where row 0
    (padding) is zeros and not present. A modality the file lacks altogether gives a
    zero table with nothing present, of the expected dimension if one is given (so that
    models of domains with and without images have the same shapes), else ``[n_items, 1]``. Items in the file but not in
    the dataset are ignored; items in the dataset but not in the file are an error.
    """
    if isinstance(modalities, str):
        modalities = (modalities,)
    expected_dims = dict(expected_dims or {})
    rows = _rows_for_ids(features, id2token)
    n_items = len(rows) + 1
    aligned = {}
    for modality in modalities:
        expected = expected_dims.get(modality)
        if modality not in features.tables:
            dim = 1 if expected is None else int(expected)
            aligned[modality] = (torch.zeros(n_items, dim), torch.zeros(n_items, dtype=torch.bool))
            continue
        source = features.tables[modality]
        if expected is not None and source.shape[1] != int(expected):
            raise FeatureFileError(
                f"Feature file {features.path} has {modality} features of dimension {source.shape[1]}, "
                f"expected {int(expected)}"
            )
        table = np.zeros((n_items, source.shape[1]), dtype=np.float32)
        present = np.zeros(n_items, dtype=bool)
        present[1:] = features.masks[modality][rows]
        table[1:] = source[rows]
        table[~present] = 0.0
        aligned[modality] = (torch.from_numpy(table), torch.from_numpy(present))
    return aligned
