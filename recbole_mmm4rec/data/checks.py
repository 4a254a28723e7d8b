"""Interaction files (``.inter``) checked before RecBole reads them: bad data is refused, odd data warned about.

Training (``quick_start.run`` and ``pretrain``, and the multi-modal dataset class) and the check tool
(``python -m recbole_mmm4rec.check``) apply the same rules (what a run needs: ``data/rules.py``), so that a
dataset the check tool passes also loads, and one that training refuses fails the check. Reading is
pandas' C parser over the cells as text: about a tenth of a second for 100,000 rows.

Refused with :class:`InteractionDataError` (a ``ValueError`` that names the file, the line — 1-based as in
an editor, the header is line 1 —, the field and the value):

* a missing file; a UTF-8 byte order mark (RecBole reads it into the first field's name); a header field
  that is not ``name:type`` with a RecBole type; a user or item field that is missing, not a ``token`` or
  not loaded (``load_col``);
* no loaded ``timestamp:float`` field although the run needs one: every sequential model (RecBole orders
  each user's history by it, and no setting turns that off) and every model whose split orders by time
  (``eval_args.order: TO``); a time field that is not ``float``;
* a row with more cells than the header; no row at all;
* an empty or NaN-like cell (``''``, ``NA``, ``nan``, ``null``, ``None``, …) in the user, item or time
  field: RecBole would fill an empty time with the column's mean, silently moving that interaction inside
  its user's sequence (it can become the user's test item), and drop a row without an id with a mere
  warning;
* a time, or a value of another loaded ``float`` field, that is not a finite number.

Warned about (through RecBole's logger, and returned): users with too few interactions for the
leave-one-out split (1 puts a user in no split, ...), empty cells of another float field (RecBole fills
them with the column's mean). With ``benchmark_filename`` each ``<dataset>.<part>.inter`` is checked the
same way, but RecBole neither orders nor splits them: the time field is not required and short users are
not counted.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from logging import getLogger
from typing import Optional

import numpy as np
import pandas as pd

from recbole_mmm4rec.data.rules import HELD_OUT, Rules

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
SHOW = 5  # how many offending lines or users a message lists
try:  # the strings pandas (and so RecBole) reads as missing
    from pandas._libs.parsers import STR_NA_VALUES as _NA
except ImportError:  # pragma: no cover - pandas internals moved
    _NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
           "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
NA_VALUES = frozenset(_NA)
ROLES = {(): "in no split: never trained on nor evaluated", ("train",): "train only: never evaluated",
         ("train", "test"): "train and test, no validation", ("train", "valid"): "train and validation, no test"}


class InteractionDataError(ValueError):
    """An interaction file that RecBole would fail on or silently misread."""


# ----------------------------------------------------------------------------- header


def parse_header(path: str, line: str, sep: str = "\t") -> dict:
    """A header line (without its line break) -> ``{name: type}``, the way RecBole splits it."""
    if line.startswith("\ufeff"):
        raise InteractionDataError(f"{path}, line 1: the file starts with a UTF-8 byte order mark, which RecBole "
                                   "reads into the first field's name; save the file as UTF-8 without BOM")
    if not line.strip():
        raise InteractionDataError(f"{path}, line 1: the header is empty; it must name the fields, e.g. "
                                   "'user_id:token<TAB>item_id:token<TAB>timestamp:float'")
    types = {}
    for column in line.split(sep):
        name, colon, ftype = column.partition(":")
        if not colon or not name or ":" in ftype:
            raise InteractionDataError(f"{path}, line 1 (header): field {column!r} is not 'name:type' (fields are "
                                       f"separated by {sep!r}; types: {', '.join(RECBOLE_TYPES)})")
        if ftype not in RECBOLE_TYPES:
            raise InteractionDataError(f"{path}, line 1 (header): field {name!r} has type {ftype!r}, which RecBole "
                                       f"does not know; use one of {', '.join(RECBOLE_TYPES)}")
        if name in types:
            raise InteractionDataError(f"{path}, line 1 (header): field {name!r} appears twice")
        types[name] = ftype
    return types


def read_header(path: str, rules: Rules) -> dict:
    """``{name: type}`` of the file's header; a missing or unreadable file raises InteractionDataError."""
    if not os.path.isfile(path):
        raise InteractionDataError(f"{path} does not exist: RecBole reads dataset '{rules.dataset}' from "
                                   f"<data_path>/{rules.dataset}/{os.path.basename(path)}")
    try:
        with open(path, encoding=rules.encoding, newline="") as handle:
            line = handle.readline()
    except UnicodeDecodeError as err:
        raise InteractionDataError(f"{path}, line 1: not {rules.encoding} ({err.reason}); re-save the file as "
                                   f"{rules.encoding} or set encoding") from None
    return parse_header(path, line.rstrip("\n").rstrip("\r"), rules.sep)


def id_problems(path: str, types: dict, rules: Rules) -> list:
    """What is wrong with the header's user and item fields (messages; [] when fine)."""
    loaded, problems = rules.loaded(types), []
    for key, name in (("USER_ID_FIELD", rules.uid), ("ITEM_ID_FIELD", rules.iid)):
        if name not in types:
            problems.append(f"{path}, line 1 (header): no '{name}:token' field ({key}); the header has "
                            + ", ".join(f"{f}:{t}" for f, t in types.items()))
        elif types[name] != "token":
            problems.append(f"{path}, line 1 (header): '{name}' has type {types[name]!r}, must be 'token'")
        elif name not in loaded:
            problems.append(f"{path}: '{name}' ({key}) is not loaded: {_load_col_text(rules)}; add it")
    return problems


def time_needed_by(rules: Rules) -> Optional[str]:
    """Why this run needs a time field (a phrase), or None."""
    if rules.parts:
        return None  # benchmark files: RecBole neither orders nor splits them
    if rules.sequential:
        reads = f", and {rules.model} (time_aware: True) also reads the time gaps" if rules.time_aware else ""
        return (f"{rules.model} is a sequential model: RecBole orders every user's history by time for every "
                f"sequential model (MMM4Rec, TiM4Rec, SASRec, …){reads}")
    if rules.order == "TO":
        return f"{rules.model}'s split orders the interactions by time (eval_args order: TO)"
    return None


def _time_fix(rules: Rules) -> str:
    column = f"'{rules.time or 'timestamp'}:float'"
    if rules.sequential:
        return (f"Add a {column} column (each interaction's position in its user's sequence will do when the rows "
                "are in time order). No setting turns time off for a sequential model: TIME_FIELD: ~ stops "
                "RecBole with \"time_field isn't set\", and time_aware: False still needs the column")
    return f"Add a {column} column, or set TIME_FIELD: ~ and eval_args order: RO (a random split)"


def time_problem(path: str, types: dict, rules: Rules) -> Optional[str]:
    """What is wrong with the time field for this run (a message), or None."""
    loaded, needed = rules.loaded(types), time_needed_by(rules)
    name = rules.time
    if name is None:
        if not needed:
            return None
        fix = f"set TIME_FIELD: timestamp (with a 'timestamp:float' column in {path})"
        fix += "" if rules.sequential else ", or eval_args order: RO (a random split)"
        return f"TIME_FIELD is not set (~), but {needed}: {fix}"
    if name in loaded and types[name] != "float":
        return (f"{path}, line 1 (header): the time field '{name}' has type {types[name]!r}, must be 'float' "
                "(RecBole would order the interactions by token id, not by time)")
    if not needed:
        return None
    if name not in types:
        return f"{path} has no '{name}:float' column (TIME_FIELD), but {needed}. {_time_fix(rules)}"
    if name not in loaded:
        return (f"{path}: the time field '{name}' is not loaded ({_load_col_text(rules)}), but {needed}. Add it, "
                f"e.g. load_col: {{inter: [{rules.uid}, {rules.iid}, {name}]}}")
    return None


def _load_col_text(rules: Rules) -> str:
    if rules.load_col is not None:
        return f"load_col.inter is [{', '.join(sorted(rules.load_col))}]"
    return f"unload_col.inter is [{', '.join(sorted(rules.unload_col))}]"


# ----------------------------------------------------------------------------- cells


def missing_mask(cells: pd.Series) -> np.ndarray:
    """True where pandas (and so RecBole) reads the cell as missing (``''``, ``NA``, ``nan``, …), or it is blank."""
    text = cells.fillna("").astype(str)
    return (text.isin(NA_VALUES) | text.str.isspace()).to_numpy()


def float_values(cells: pd.Series, missing: Optional[np.ndarray] = None) -> tuple:
    """(values, bad): the cells as RecBole's float parser reads them; bad = present but not a finite number."""
    text = cells.fillna("").astype(str)
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
    missing = missing_mask(cells) if missing is None else missing
    for i in np.flatnonzero(np.isnan(values) & ~missing):  # what Python's float() takes (e.g. '1_000')
        try:
            values[i] = float(text.iat[i])
        except ValueError:
            pass
    return values, ~np.isfinite(values) & ~missing


def read_cells(path: str, types: dict, rules: Rules) -> pd.DataFrame:
    """Every cell of the file as text (``''`` where a row is short), one column per field, blank lines skipped."""
    try:
        frame = pd.read_csv(path, sep=rules.sep, dtype=str, na_filter=False, encoding=rules.encoding,
                            engine="c" if len(rules.sep) == 1 else "python")
    except pd.errors.ParserError as err:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        where = (f"line {found[2]} has {found[3]} cells, the header {found[1]}" if found else str(err).strip())
        raise InteractionDataError(f"{path}, {where}: a separator inside a value? fix or remove that row") from None
    except UnicodeDecodeError as err:
        raise InteractionDataError(f"{path}: not {rules.encoding} ({err.reason}); re-save it as "
                                   f"{rules.encoding}") from None
    if len(frame.columns) != len(types):
        raise InteractionDataError(f"{path}: pandas reads {len(frame.columns)} columns, the header names "
                                   f"{len(types)}")
    frame.columns = list(types)
    return frame.fillna("")


def line_numbers(path: str, n_rows: int) -> Optional[np.ndarray]:
    """File line (1-based, header = 1) of each data row as pandas reads them; None if that cannot be told."""
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    numbers = [number for number, line in enumerate(lines[1:], start=2) if line.strip(b" \r")]
    return np.asarray(numbers) if len(numbers) == n_rows else None


def where(lines: Optional[np.ndarray], mask: np.ndarray, cells: Optional[pd.Series] = None) -> str:
    """``line 7 ('abc'), line 9 ('x'), … (12 in all)`` for a message (``data row`` when lines are unknown)."""
    rows = np.flatnonzero(mask)
    shown = []
    for row in rows[:SHOW]:
        text = f"line {lines[row]}" if lines is not None else f"data row {row + 1}"
        shown.append(text + (f": {cells.iat[row]!r}" if cells is not None else ""))
    return ", ".join(shown) + (f", … ({len(rows)} in all)" if len(rows) > SHOW else "")


def empty_message(path: str, name: str, rules: Rules, lines, mask) -> str:
    """The refusal of empty or NaN-like cells in the user, item or time field."""
    if name == rules.time:
        why = ("RecBole would fill them with the column's mean time, which silently moves the interaction inside "
               "its user's sequence (it can become the test item)")
    else:
        why = "RecBole would drop these rows, with a mere warning in its log"
    return (f"{path}: field '{name}' is empty or missing on {int(mask.sum())} line(s) ({where(lines, mask)}); "
            f"pandas reads '', 'NA', 'nan', 'null', 'None', … as missing and {why}: fill in or remove these rows")


def not_number_message(path: str, name: str, lines, mask, cells) -> str:
    """The refusal of float cells that are not finite numbers."""
    return (f"{path}: field '{name}' has {int(mask.sum())} value(s) that are not finite numbers "
            f"({where(lines, mask, cells)})")


def cell_problems(path: str, frame: pd.DataFrame, types: dict, rules: Rules) -> tuple:
    """(errors, warnings) about the cells of the loaded fields; line numbers are looked up only when needed."""
    errors, warnings, known = [], [], {}

    def lines():
        if "lines" not in known:
            known["lines"] = line_numbers(path, len(frame))
        return known["lines"]

    loaded = rules.loaded(types)
    checked = [name for name in frame if name in loaded and types[name] in ("token", "float")]
    missing = {name: missing_mask(frame[name]) for name in checked}
    for name in (rules.uid, rules.iid, rules.time):
        if name in missing and missing[name].any():
            errors.append(empty_message(path, name, rules, lines(), missing[name]))
    for name in [f for f, t in types.items() if t == "float" and f in missing]:
        _, bad = float_values(frame[name], missing[name])
        if bad.any():
            errors.append(not_number_message(path, name, lines(), bad, frame[name]))
        if name != rules.time and missing[name].any():
            warnings.append(f"{path}: field '{name}' is empty on {int(missing[name].sum())} line(s) "
                            f"({where(lines(), missing[name])}): RecBole fills them with the column's mean")
    return errors, warnings


# ----------------------------------------------------------------------------- short users


def split_roles(n: int, mode: str, sequential: bool) -> tuple:
    """The splits a user with ``n`` interactions appears in under RecBole's leave-one-out (``mode``).

    A sequential dataset makes n - 1 next-item samples per user; RecBole gives the last samples to the
    held-out splits only while at least one sample is left for training.
    """
    samples = n - 1 if sequential else n
    if samples <= 0:
        return ()
    held = HELD_OUT[mode]
    kept = min(len(held), samples - 1)
    return ("train",) + held[len(held) - kept:]


def needed_interactions(mode: str, sequential: bool) -> int:
    """The fewest interactions that put a user in every split."""
    return 1 + len(HELD_OUT[mode]) + int(sequential)


def _in_interval(counts: pd.Series, interval) -> np.ndarray:
    """Which counts RecBole's user_inter_num_interval (e.g. ``"[3,inf)"``) keeps: all when unset or unreadable."""
    values = counts.to_numpy()
    if interval is None:
        return np.ones(len(values), dtype=bool)
    keep = np.zeros(len(values), dtype=bool)
    for part in str(interval).split(";"):
        found = re.fullmatch(r"\s*([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])\s*", part)
        if not found:
            return np.ones(len(values), dtype=bool)
        low, high = float(found[2]), float(found[3])
        above = values >= low if found[1] == "[" else values > low
        below = values <= high if found[4] == "]" else values < high
        keep |= above & below
    return keep


def short_users(users: pd.Series, rules: Rules) -> tuple:
    """(message or None, number of users): users with too few interactions for the leave-one-out split."""
    if rules.leave_one_out is None or rules.parts:
        return None, 0
    counts = users.value_counts(sort=False)
    counts = counts[_in_interval(counts, rules.user_interval)]
    mode, sequential = rules.leave_one_out, rules.sequential
    needed = needed_interactions(mode, sequential)
    short = counts[counts < needed]
    if not len(short):
        return None, 0
    groups = ", ".join(f"{int((short == n).sum())} with {n} ({ROLES[split_roles(n, mode, sequential)]})"
                       for n in sorted(set(short.tolist())))
    splits = ["training"] + [{"valid": "validation", "test": "test"}[h] for h in HELD_OUT[mode]]
    splits = ", ".join(splits[:-1]) + " and " + splits[-1]
    samples = " (a sequential model learns from n - 1 next-item samples per user)" if sequential else ""
    examples = ", ".join(repr(str(user)) for user in short.index[:SHOW])
    message = (f"{len(short)} of {len(counts)} user(s) have fewer than {needed} interactions, the fewest that give "
               f"a user a {splits} item in RecBole's leave-one-out split{samples}: {groups}; e.g. {examples}; "
               f"filter them with user_inter_num_interval: \"[{needed},inf)\"")
    return message, len(short)


# ----------------------------------------------------------------------------- the check


def check_files(rules: Rules) -> list:
    """Check every interaction file of ``rules``: raises InteractionDataError, returns the warnings."""
    warnings, users = [], []
    for path in rules.paths:
        types = read_header(path, rules)
        problems = id_problems(path, types, rules) + [time_problem(path, types, rules)]
        problems = [problem for problem in problems if problem]
        if problems:
            raise InteractionDataError("\n".join(problems))
        frame = read_cells(path, types, rules)
        if not len(frame):
            raise InteractionDataError(f"{path} has a header but no interaction rows")
        errors, file_warnings = cell_problems(path, frame, types, rules)
        if errors:
            raise InteractionDataError("\n".join(errors) + f"\n(python -m recbole_mmm4rec.check {rules.folder} "
                                       "lists every problem of the dataset)")
        warnings += file_warnings
        users.append(frame[rules.uid])
    message, _ = short_users(pd.concat(users, ignore_index=True), rules)
    if message:
        warnings.append(f"{rules.paths[0]}: {message}")
    return warnings


_CHECKED = OrderedDict()  # (rules, file stats) -> warnings: a second check of unchanged files logs nothing


def check_interactions(config, logger=None) -> list:
    """Check the ``.inter`` file(s) of a RecBole ``config`` before RecBole loads them.

    Raises :class:`InteractionDataError` (a ValueError naming file, line, field and value) for data that
    RecBole would fail on or silently misread; logs each warning with ``logger`` (RecBole's, the root
    logger, by default) and returns them. Checking the same unchanged files again logs nothing.
    """
    rules = Rules.from_config(config)
    stats = tuple((path, os.stat(path).st_size, os.stat(path).st_mtime_ns) if os.path.isfile(path) else (path,)
                  for path in rules.paths)
    key = (rules, stats)
    if key in _CHECKED:
        return list(_CHECKED[key])
    warnings = check_files(rules)
    for message in warnings:
        (logger or getLogger()).warning(message)
    _CHECKED[key] = warnings
    while len(_CHECKED) > 32:
        _CHECKED.popitem(last=False)
    return list(warnings)
