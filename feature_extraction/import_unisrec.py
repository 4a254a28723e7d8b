"""Convert a UniSRec/MISSRec-layout folder into RecBole atomic files plus an item feature file.

Input folder (``<P>`` = file prefix, e.g. ``Scientific``):

- ``<P>.train.inter``, ``<P>.valid.inter``, ``<P>.test.inter``: one row per prediction
  target, ``user_id:token  item_id_list:token_seq  item_id:token`` with integer tokens;
  the test row is a user's history + last item, the valid row history + second-to-last.
- ``<P>.item2index`` / ``<P>.user2index``: ``ASIN<TAB>int`` / ``reviewer<TAB>int``.
- ``<P>.text``: ``item_id:token<TAB>text:token_seq`` keyed by ASIN.
- optional ``<P>.feat1CLS`` (text) and ``<P>.feat3CLS`` (image): raw float32, row r =
  the item whose integer index is r.

Output folder ``OUT/NAME/``: ``NAME.inter`` (user, item, timestamp), ``NAME.item``
(item text), ``NAME.features.npz`` (see ``recbole_mmm4rec/data/features.py``) and
``NAME.stats.json``.

The source has no timestamps: each interaction gets its position in the user's
sequence (1, 2, 3, ...) as timestamp, so RecBole's leave-one-out split ordered by
time reproduces the source's split (last item = test target, second-to-last = valid).

Usage::

    python feature_extraction/import_unisrec.py SRC_DIR --name scientific_mm --out atomic_data
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # atomic_files.py, beside this script
from atomic_files import (  # noqa: E402
    INTER_HEADER, ITEM_HEADER, SourceFormatError, infer_prefix, require, size, write_json, write_rows)

try:
    from recbole_mmm4rec.data.features import feature_path, write_features
except ImportError:  # run as a script from a checkout where the package is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from recbole_mmm4rec.data.features import feature_path, write_features

SOURCE_INTER_HEADER = ["user_id:token", "item_id_list:token_seq", "item_id:token"]
TEXT_HEADER = ["item_id:token", "text:token_seq"]
SPLITS = ("train", "valid", "test")
MODALITY_FILES = {"text": "feat1CLS", "image": "feat3CLS"}
HISTORY_CAP = 50  # UniSRec-style sources keep at most the last 50 items of a history


@dataclass(frozen=True)
class Row:
    """One row of a source ``.inter`` file: a user's history and the next item."""

    user: int
    history: tuple
    target: int
    split: str
    where: str  # "file:line" for error messages


# ----------------------------------------------------------------------------- reading the source


def read_index(path: str) -> dict:
    """``token<TAB>int`` lines -> {token: int}; tokens unique, ints exactly 0..n-1."""
    index = {}
    with open(require(path), encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[1].isdigit():
                raise SourceFormatError(f"{path}:{line_no}: expected 'token<TAB>integer', got {line.rstrip()!r}")
            if parts[0] in index:
                raise SourceFormatError(f"{path}:{line_no}: token {parts[0]!r} appears twice")
            index[parts[0]] = int(parts[1])
    if sorted(index.values()) != list(range(len(index))):
        raise SourceFormatError(f"{path}: the integer indices are not exactly 0..{len(index) - 1}")
    return index


def _header(path: str, handle, expected: list) -> None:
    header = handle.readline().rstrip("\n").split("\t")
    if header != expected:
        raise SourceFormatError(f"{path}: header should be {expected}, got {header}")


def _int_token(value: str, where: str, field: str) -> int:
    if not value.isdigit():
        raise SourceFormatError(f"{where}: {field} {value!r} is not an integer token")
    return int(value)


def read_inter(path: str, split: str) -> list:
    """Rows of one UniSRec ``.inter`` file."""
    rows = []
    with open(require(path), encoding="utf-8") as handle:
        _header(path, handle, SOURCE_INTER_HEADER)
        for line_no, line in enumerate(handle, 2):
            where = f"{path}:{line_no}"
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise SourceFormatError(f"{where}: expected 3 tab-separated columns, got {len(parts)}")
            history = tuple(_int_token(t, where, "history item") for t in parts[1].split())
            if not history:
                raise SourceFormatError(f"{where}: empty history")
            rows.append(
                Row(_int_token(parts[0], where, "user"), history, _int_token(parts[2], where, "item"), split, where)
            )
    return rows


def read_texts(path: str) -> dict:
    """{ASIN: text}, with tabs, newlines and runs of spaces collapsed to single spaces."""
    texts = {}
    with open(require(path), encoding="utf-8") as handle:
        _header(path, handle, TEXT_HEADER)
        for line_no, line in enumerate(handle, 2):
            asin, sep, text = line.rstrip("\n").partition("\t")
            if not sep:
                raise SourceFormatError(f"{path}:{line_no}: expected 'ASIN<TAB>text', got {line.rstrip()!r}")
            if asin in texts:
                raise SourceFormatError(f"{path}:{line_no}: item {asin!r} appears twice")
            texts[asin] = " ".join(text.split())
    return texts


def read_raw_features(path: str, item_tokens: list) -> np.ndarray:
    """Raw float32 rows, row r = item with integer index r; the dimension follows from the size."""
    n_items = len(item_tokens)
    size = os.path.getsize(path)
    if n_items == 0 or size % (4 * n_items):
        raise SourceFormatError(
            f"{path}: {size} bytes is not a whole number of float32 rows for {n_items} items "
            f"({size / 4 / max(n_items, 1):.3f} values per item): rows are missing or the file belongs elsewhere"
        )
    table = np.fromfile(path, dtype="<f4").reshape(n_items, size // 4 // n_items)
    bad = np.flatnonzero(~np.isfinite(table).all(axis=1))
    if len(bad):
        raise SourceFormatError(f"{path}: {len(bad)} row(s) hold NaN or inf, first: item {item_tokens[bad[0]]!r}")
    return table


# ----------------------------------------------------------------------------- sequences


def _window(seq: list, k: int, cap: int) -> tuple:
    """The history the source stores for the target at position k: at most ``cap`` items before it."""
    return tuple(seq[max(0, k - cap) : k])


def _chain(rows: list, cap: int) -> list:
    """Rebuild a sequence whose test history was cut at ``cap`` by chaining rows history -> next item."""
    by_history = defaultdict(list)
    for row in rows:
        by_history[row.history].append(row)
    seq = list(min(rows, key=lambda r: len(r.history)).history)
    while by_history.get(tuple(seq[-cap:])):
        following = by_history[tuple(seq[-cap:])]
        if len(following) > 1:
            raise SourceFormatError(
                f"user {rows[0].user}: rows {following[0].where} and {following[1].where} share a history; "
                f"the capped sequence cannot be rebuilt unambiguously"
            )
        seq.append(following.pop().target)
    return seq


def _check_user_rows(user: int, seq: list, rows: list, cap: int) -> None:
    """The rows must be exactly what the source's leave-one-out generation makes from ``seq``."""
    n = len(seq)
    test = next(r for r in rows if r.split == "test")
    valid = next(r for r in rows if r.split == "valid")
    if (test.history, test.target) != (_window(seq, n - 1, cap), seq[n - 1]):
        raise SourceFormatError(f"{test.where}: the test row of user {user} does not end the rebuilt sequence {seq}")
    if (valid.history, valid.target) != (_window(seq, n - 2, cap), seq[n - 2]):
        raise SourceFormatError(
            f"{valid.where}: the valid row of user {user} (history {list(valid.history)}, target {valid.target}) "
            f"is not the test history {list(test.history)} minus its last item followed by that item"
        )
    expected = Counter((_window(seq, k, cap), seq[k]) for k in range(1, n - 2))
    actual = Counter((r.history, r.target) for r in rows if r.split == "train")
    extra, lacking = actual - expected, expected - actual
    if extra:
        row = next(r for r in rows if r.split == "train" and (r.history, r.target) in extra)
        raise SourceFormatError(
            f"{row.where}: this train row of user {user} does not fit the user's sequence {seq} (from the test row)"
        )
    if lacking:
        history, target = next(iter(lacking))
        raise SourceFormatError(f"user {user}: no train row for target {target} after history {list(history)}")


def rebuild_sequences(rows: list, cap: int = HISTORY_CAP) -> tuple:
    """{user int: full item sequence} from all rows, plus the users whose history reached ``cap``.

    Uncapped users: sequence = test history + test target. Users whose test history has
    ``cap`` items may have lost their earliest items there; they are rebuilt by chaining
    the train rows. Either way every row is checked against the rebuilt sequence.
    """
    by_user = defaultdict(list)
    for row in rows:
        by_user[row.user].append(row)
    sequences, capped = {}, []
    for user, user_rows in sorted(by_user.items()):
        counts = Counter(r.split for r in user_rows)
        if counts["test"] != 1 or counts["valid"] != 1:
            raise SourceFormatError(
                f"user {user} has {counts['test']} test and {counts['valid']} valid rows (expected 1 each), "
                f"e.g. {user_rows[0].where}"
            )
        longest = max(user_rows, key=lambda r: len(r.history))
        if len(longest.history) > cap:
            raise SourceFormatError(f"{longest.where}: history of {len(longest.history)} items exceeds the cap {cap}")
        test = next(r for r in user_rows if r.split == "test")
        if len(test.history) < cap:
            seq = list(test.history) + [test.target]
        else:
            capped.append(user)
            seq = _chain(user_rows, cap)
        _check_user_rows(user, seq, user_rows, cap)
        sequences[user] = seq
    return sequences, capped


def _check_known(sequences: dict, user_tokens: list, item_tokens: list, src: str) -> None:
    """Every integer token used in the .inter files must exist in the index files."""
    for user, seq in sequences.items():
        if user >= len(user_tokens):
            raise SourceFormatError(f"{src}: user {user} of the .inter files is not in the user2index file")
        unknown = [i for i in seq if i >= len(item_tokens)]
        if unknown:
            raise SourceFormatError(f"{src}: item {unknown[0]} (user {user}) is not in the item2index file")


# ----------------------------------------------------------------------------- writing


def write_inter(path: str, sequences: dict, user_tokens: list, item_tokens: list) -> int:
    """One row per interaction; timestamp = position in the user's sequence (1, 2, ...)."""
    rows = ((user_tokens[user], item_tokens[item], position)
            for user, seq in sorted(sequences.items()) for position, item in enumerate(seq, 1))
    return write_rows(path, INTER_HEADER, rows)


def write_items(path: str, item_tokens: list, texts: dict) -> None:
    write_rows(path, ITEM_HEADER, ((asin, texts.get(asin, "")) for asin in item_tokens))


def _modality_tables(src_dir: str, prefix: str, item_tokens: list, log: Callable) -> tuple:
    """Feature tables keyed by modality, masks for all-zero rows (treated as missing), per-modality info."""
    tables, masks, info = {}, {}, {}
    for modality, suffix in MODALITY_FILES.items():
        path = os.path.join(src_dir, f"{prefix}.{suffix}")
        if not os.path.isfile(path):
            log(f"note: {path} not found: no {modality} features")
            info[modality] = {"dim": 0, "coverage": 0.0, "source": None}
            continue
        table = read_raw_features(path, item_tokens)
        present = np.abs(table).sum(axis=1) > 0
        if not present.all():
            log(f"note: {modality}: {int((~present).sum())} all-zero row(s) in {path} are marked missing")
            masks[modality] = present
        tables[modality] = table
        info[modality] = {"dim": int(table.shape[1]), "coverage": float(present.mean()), "source": os.path.basename(path)}
    return tables, masks, info


def convert(
    src_dir: str, name: str, out: str, prefix: Optional[str] = None, cap: int = HISTORY_CAP, log: Callable = print
) -> dict:
    """Convert ``src_dir`` into ``out/name/``; returns the statistics also written to ``name.stats.json``."""
    prefix = prefix or infer_prefix(src_dir, ".train.inter")
    base = os.path.join(src_dir, prefix)
    item_index = read_index(base + ".item2index")
    user_index = read_index(base + ".user2index")
    item_tokens = sorted(item_index, key=item_index.get)
    user_tokens = sorted(user_index, key=user_index.get)
    rows = [row for split in SPLITS for row in read_inter(f"{base}.{split}.inter", split)]
    sequences, capped = rebuild_sequences(rows, cap)
    _check_known(sequences, user_tokens, item_tokens, src_dir)
    texts = read_texts(base + ".text")
    without_text = [asin for asin in item_tokens if asin not in texts]
    if without_text:
        log(f"warning: {len(without_text)} item(s) have no text in {base}.text, e.g. {without_text[:5]}")
    tables, masks, feature_info = _modality_tables(src_dir, prefix, item_tokens, log)

    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    inter_path = os.path.join(folder, name + ".inter")
    item_path = os.path.join(folder, name + ".item")
    npz_path = feature_path(out, name)
    stats_path = os.path.join(folder, name + ".stats.json")
    n_inter = write_inter(inter_path, sequences, user_tokens, item_tokens)
    write_items(item_path, item_tokens, texts)
    write_features(npz_path, item_tokens, tables, masks)

    lengths = [len(seq) for seq in sequences.values()]
    stats = {
        "source": os.path.abspath(src_dir),
        "prefix": prefix,
        "users": len(sequences),
        "items": len({item for seq in sequences.values() for item in seq}),
        "items_in_index": len(item_tokens),
        "interactions": n_inter,
        "avg_seq_len": round(float(np.mean(lengths)), 4),
        "min_seq_len": int(min(lengths)),
        "max_seq_len": int(max(lengths)),
        "history_cap": cap,
        "users_at_history_cap": len(capped),
        "items_without_text": len(without_text),
        "features": feature_info,
        "image_coverage": feature_info["image"]["coverage"],
        "timestamp": "ordinal position of the interaction in the user's sequence (1, 2, ...); no real time",
    }
    write_json(stats_path, stats)

    if capped:
        log(f"note: {len(capped)} user(s) have a test history of {cap} items (the source's cap); "
            f"their earlier items were recovered from the train rows")
    else:
        log(f"note: no history reaches the source's cap of {cap} items (longest sequence: {max(lengths)}), "
            f"so every sequence is complete")
    for path in (inter_path, item_path, npz_path, stats_path):
        log(f"wrote {path} ({size(path)})")
    log(json.dumps(stats, indent=2))
    return stats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src_dir", help="folder in UniSRec/MISSRec layout")
    parser.add_argument("--name", required=True, help="dataset name: output goes to OUT/NAME/NAME.*")
    parser.add_argument("--out", default="atomic_data", help="output root (default: atomic_data)")
    parser.add_argument("--prefix", help="file prefix in SRC_DIR (default: inferred from *.train.inter)")
    parser.add_argument("--history-cap", type=int, default=HISTORY_CAP, help="the source's history cap (default 50)")
    args = parser.parse_args(argv)
    try:
        convert(args.src_dir, args.name, args.out, args.prefix, args.history_cap)
    except SourceFormatError as err:
        sys.exit(f"import_unisrec: {err}")


if __name__ == "__main__":
    main()
