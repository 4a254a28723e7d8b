"""Check a dataset folder end to end before training on it.

    python -m recbole_mmm4rec.check PATH/TO/DATASET_FOLDER [--json] [--config FILE] [--feature-dims text=512,image=512]

The folder's name is the dataset's name: ``<name>/<name>.inter`` (required), ``<name>/<name>.item``
(optional) and ``<name>/<name>.features.npz`` (required, format: ``recbole_mmm4rec/data/features.py``).
``feature_dims`` (and the user/item/time field names) come from ``properties/dataset/<name>.yaml`` when
that file exists, or from ``--config``; ``--feature-dims`` overrides them.

Prints one line per check (``OK``, ``WARN`` or ``FAIL``, what is wrong and how to fix it) and the
dataset's figures; ``--json`` prints the same as JSON. Exit code 0 when no check FAILs, 1 otherwise.

Only pandas/NumPy reading: no RecBole dataset is built, so the check takes about a second.

What FAILs (RecBole or MMM4Rec would stop, or silently load wrong data): a missing or unparsable
``.inter``, a header field that is not ``name:type`` with a RecBole type, a missing user/item field, a
row whose column count differs from the header's, an empty or NaN-like user/item cell, a float cell that
is not a number, a missing or invalid feature file, an item of the ``.inter`` without a row in the
feature file, a feature dimension other than ``feature_dims``.

What WARNs (training runs, but probably not as intended): no timestamp field (MMM4Rec and every
time-aware model need one), users with fewer than 3 interactions (leave-one-out gives a user with 2
interactions no validation item and one with 1 interaction neither validation nor test item; filter them
with ``user_inter_num_interval: "[3,inf)"``), equal timestamps within a user (the split's order among
them is not defined by time), items without any modality present, a modality of ``feature_dims`` the
file lacks, a modality MMM4Rec does not read, items of the ``.inter`` missing from the ``.item``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from recbole_mmm4rec.data.features import FEATURE_SUFFIX, FeatureFileError, read_features

PROPERTIES = Path(__file__).resolve().parent.parent / "properties"
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
MODALITIES = ("text", "image")  # what MMM4Rec reads (recbole_mmm4rec/data/dataset.py)
MIN_INTERACTIONS = 3  # leave-one-out (train / valid / test) needs 3 interactions per user
SEP = "\t"  # RecBole's default field_separator
SHOW = 5  # how many offending lines / items a message lists
try:  # the strings pandas (and so RecBole) reads as missing
    from pandas._libs.parsers import STR_NA_VALUES as _NA
except ImportError:  # pragma: no cover - pandas internals moved
    _NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
           "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
NA_VALUES = frozenset(_NA)

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass
class Report:
    """The outcome of :func:`check_dataset`: one entry per check, and the dataset's figures."""

    dataset: str
    folder: str
    checks: list = field(default_factory=list)  # [{"status", "check", "message"}]
    figures: dict = field(default_factory=dict)

    def add(self, status: str, check: str, message: str) -> None:
        self.checks.append({"status": status, "check": check, "message": message})

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return not any(c["status"] == FAIL for c in self.checks)

    @property
    def problems(self) -> list:
        return [c for c in self.checks if c["status"] != OK]

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "folder": self.folder,
            "ok": self.ok,
            "figures": self.figures,
            "problems": self.problems,
            "checks": self.checks,
        }

    def to_text(self) -> str:
        lines = [f"Checking dataset '{self.dataset}' in {self.folder}"]
        lines += [f"{c['status']:<4}  {c['check']}: {c['message']}" for c in self.checks]
        if self.figures:
            lines.append("Figures:")
            lines += [f"  {key}: {_fmt(value)}" for key, value in self.figures.items()]
        n_fail = sum(c["status"] == FAIL for c in self.checks)
        n_warn = sum(c["status"] == WARN for c in self.checks)
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{verdict}: {n_fail} failure(s), {n_warn} warning(s)")
        return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def _lines(numbers) -> str:
    """``line 3, line 7, … (12 in all)`` for messages."""
    numbers = list(numbers)
    shown = ", ".join(f"line {n}" for n in numbers[:SHOW])
    return shown + (f", … ({len(numbers)} in all)" if len(numbers) > SHOW else "")


def _items(tokens) -> str:
    tokens = list(tokens)
    shown = ", ".join(repr(str(t)) for t in tokens[:SHOW])
    return shown + (f", … ({len(tokens)} in all)" if len(tokens) > SHOW else "")


# ----------------------------------------------------------------------------- atomic files


@dataclass
class Atomic:
    """The parsed rows of one atomic file: well-formed rows only, as strings."""

    path: str
    types: dict  # field -> RecBole type
    frame: pd.DataFrame  # one column per field (str), rows with the header's column count
    line_no: np.ndarray  # file line number (1-based, header = 1) of each row of ``frame``


def read_atomic(path: str, report: Report, check: str, required: Mapping[str, str]) -> Optional[Atomic]:
    """Parse a RecBole atomic file line by line; every problem goes to ``report``.

    ``required`` maps field name -> the RecBole type it must have. Returns None when the file
    cannot be used at all (missing, not UTF-8, bad header, required field missing).
    """
    name = os.path.basename(path)
    if not os.path.isfile(path):
        report.add(FAIL, check, f"{path} is missing (RecBole reads <name>/<name>{os.path.splitext(name)[1]})")
        return None
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        report.add(FAIL, check, f"{path} is not UTF-8 (line {line}: {err.reason}); re-save it as UTF-8")
        return None
    lines = text.removeprefix("\ufeff").split("\n")  # pandas ignores a UTF-8 byte order mark too
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if not lines or not lines[0].strip():
        report.add(FAIL, check, f"{path} is empty: the first line must be the header, e.g. "
                                "'user_id:token<TAB>item_id:token<TAB>timestamp:float'")
        return None

    types = {}
    for column in lines[0].split(SEP):
        fname, colon, ftype = column.partition(":")
        if not colon or not fname or ":" in ftype:
            report.add(FAIL, check, f"{path}, header: field {column!r} is not 'name:type' "
                                    f"(fields are separated by tabs; types: {', '.join(RECBOLE_TYPES)})")
            return None
        if ftype not in RECBOLE_TYPES:
            report.add(FAIL, check, f"{path}, header: field {fname!r} has type {ftype!r}, which RecBole does not "
                                    f"know; use one of {', '.join(RECBOLE_TYPES)}")
            return None
        if fname in types:
            report.add(FAIL, check, f"{path}, header: field {fname!r} appears twice")
            return None
        types[fname] = ftype
    for fname, ftype in required.items():
        if fname not in types:
            report.add(FAIL, check, f"{path}, header: no '{fname}' field (need '{fname}:{ftype}'; "
                                    f"header is {lines[0]!r})")
            return None
        if types[fname] != ftype:
            report.add(FAIL, check, f"{path}, header: '{fname}' has type {types[fname]!r}, must be {ftype!r}")
            return None

    n_cols = len(types)
    rows, numbers, bad = [], [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # pandas skips blank lines
        parts = line.split(SEP)
        if len(parts) == n_cols:
            rows.append(parts)
            numbers.append(number)
        else:
            bad.append((number, len(parts)))
    if bad:
        shown = ", ".join(f"line {n} has {k}" for n, k in bad[:SHOW])
        more = f", … ({len(bad)} rows in all)" if len(bad) > SHOW else ""
        report.add(FAIL, check, f"{path}: {len(bad)} row(s) do not have the header's {n_cols} tab-separated "
                                f"columns: {shown}{more}; fix or remove them (a tab inside a text field splits it)")
    frame = pd.DataFrame(rows, columns=list(types), dtype=object) if rows else pd.DataFrame(columns=list(types))
    atomic = Atomic(path=path, types=types, frame=frame, line_no=np.asarray(numbers, dtype=np.int64))
    if not bad:
        report.add(OK, check, f"{path}: {len(frame)} rows, fields "
                              + ", ".join(f"{k}:{v}" for k, v in types.items()))
    return atomic


def _drop_missing(atomic: Atomic, fields, report: Report, check: str) -> None:
    """Rows with an empty or NaN-like cell in ``fields`` are reported and dropped."""
    frame = atomic.frame
    for fname in fields:
        cells = frame[fname].astype(str)
        missing = (cells.isin(NA_VALUES) | (cells.str.strip() == "")).to_numpy()
        if missing.any():
            report.add(FAIL, check, f"{atomic.path}: {int(missing.sum())} row(s) with an empty or missing "
                                    f"'{fname}' ({_lines(atomic.line_no[missing])}); pandas/RecBole read "
                                    "'', 'NA', 'nan', 'null', 'None', … as missing: fill or remove these rows")
            keep = ~missing
            atomic.frame = frame = frame[keep].reset_index(drop=True)
            atomic.line_no = atomic.line_no[keep]


def _check_floats(atomic: Atomic, report: Report, check: str, time_field: Optional[str]) -> None:
    """Float cells must be numbers (the timestamp must be present and finite too)."""
    for fname, ftype in atomic.types.items():
        if ftype != "float" or fname not in atomic.frame:
            continue
        cells = atomic.frame[fname].astype(str).str.strip()
        values = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=float)
        empty = cells.isin(NA_VALUES).to_numpy()
        bad = ~np.isfinite(values) & ~empty
        if bad.any():
            report.add(FAIL, check, f"{atomic.path}: {int(bad.sum())} '{fname}' value(s) are not finite numbers "
                                    f"({_lines(atomic.line_no[bad])})")
        if fname == time_field and empty.any():
            report.add(FAIL, check, f"{atomic.path}: {int(empty.sum())} row(s) without a '{fname}' "
                                    f"({_lines(atomic.line_no[empty])}); RecBole would fill them with the mean "
                                    "time, which scrambles the sequence order")
        if fname == time_field:
            atomic.frame = atomic.frame.assign(**{fname: values})


# ----------------------------------------------------------------------------- config


def dataset_config(name: str, config_file: Optional[str] = None) -> tuple:
    """(settings, path) from ``config_file`` or ``properties/dataset/<name>.yaml``; ({}, None) if neither."""
    path = config_file or str(PROPERTIES / "dataset" / f"{name}.yaml")
    if not os.path.isfile(path):
        if config_file:
            raise FileNotFoundError(f"config file {config_file} does not exist")
        return {}, None
    import yaml

    with open(path, encoding="utf-8") as handle:
        return (yaml.safe_load(handle) or {}), path


def parse_dims(text: str) -> dict:
    """``'text=512,image=512'`` (or JSON) -> ``{'text': 512, 'image': 512}``."""
    text = text.strip()
    if text.startswith("{"):
        return {str(k): int(v) for k, v in json.loads(text).items()}
    dims = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        dims[key.strip()] = int(value)
    return dims


# ----------------------------------------------------------------------------- the check


def check_dataset(
    folder,
    feature_dims: Optional[Mapping[str, int]] = None,
    config_file: Optional[str] = None,
    use_config: bool = True,
) -> Report:
    """Check ``folder`` (``<...>/<name>/``) and return the :class:`Report`.

    ``feature_dims`` overrides the one of the dataset's yaml (``config_file``, default
    ``properties/dataset/<name>.yaml``); ``use_config=False`` ignores the yaml altogether.
    """
    folder = os.path.normpath(os.fspath(folder))
    name = os.path.basename(folder)
    report = Report(dataset=name, folder=folder)
    if not os.path.isdir(folder):
        report.add(FAIL, "folder", f"{folder} is not a folder; pass the dataset folder, e.g. atomic_data/{name}")
        return report

    settings, settings_path = dataset_config(name, config_file) if use_config else ({}, None)
    uid = settings.get("USER_ID_FIELD", "user_id")
    iid = settings.get("ITEM_ID_FIELD", "item_id")
    time_field = settings.get("TIME_FIELD", "timestamp")
    dims_source = "--feature-dims"
    if feature_dims is None and settings.get("feature_dims"):
        feature_dims, dims_source = settings["feature_dims"], f"feature_dims in {settings_path}"
    feature_dims = {str(k): int(v) for k, v in (feature_dims or {}).items()}

    inter = _check_inter(os.path.join(folder, name + ".inter"), report, uid, iid, time_field)
    items = None
    if inter is not None:
        items = pd.unique(inter.frame[iid])
    _check_item_file(os.path.join(folder, name + ".item"), report, iid, items)
    _check_features(os.path.join(folder, name + FEATURE_SUFFIX), report, items, feature_dims, dims_source)
    return report


def _check_inter(path, report, uid, iid, time_field) -> Optional[Atomic]:
    atomic = read_atomic(path, report, "interactions", {uid: "token", iid: "token"})
    if atomic is None:
        return None
    _drop_missing(atomic, (uid, iid), report, "interactions")
    has_time = time_field in atomic.types
    if has_time and atomic.types[time_field] != "float":
        report.add(FAIL, "timestamp", f"{path}, header: '{time_field}' has type "
                                      f"{atomic.types[time_field]!r}, must be 'float'")
        has_time = False
    _check_floats(atomic, report, "interactions", time_field if has_time else None)
    frame = atomic.frame
    if has_time:
        frame = frame[np.isfinite(frame[time_field].to_numpy(dtype=float))]

    figures = report.figures
    lengths = frame.groupby(uid, sort=False).size() if len(frame) else pd.Series(dtype=int)
    figures["users"] = int(len(lengths))
    figures["items"] = int(frame[iid].nunique())
    figures["interactions"] = int(len(frame))
    figures["avg_seq_len"] = round(float(lengths.mean()), 4) if len(lengths) else 0.0
    figures["min_seq_len"] = int(lengths.min()) if len(lengths) else 0
    figures["max_seq_len"] = int(lengths.max()) if len(lengths) else 0
    short = lengths[lengths < MIN_INTERACTIONS]
    figures[f"users_with_fewer_than_{MIN_INTERACTIONS}_interactions"] = int(len(short))
    if not len(frame):
        report.add(FAIL, "interactions", f"{path} has no usable interaction rows")
        return atomic

    if not has_time:
        report.add(WARN, "timestamp", f"{path} has no '{time_field}:float' field: MMM4Rec (time_aware: True) and "
                                      "every time-aware model need a timestamp, and RecBole's leave-one-out then "
                                      "splits by file order; add one (the position in the user's sequence will do)")
    else:
        times = frame[time_field].to_numpy(dtype=float)
        t_min, t_max = float(times.min()), float(times.max())
        figures["time_min"], figures["time_max"], figures["time_span"] = t_min, t_max, t_max - t_min
        message = f"'{time_field}' from {t_min:g} to {t_max:g}"
        if t_min >= 1e8:  # looks like unix seconds (after 1973)
            first = datetime.fromtimestamp(t_min, tz=timezone.utc).date().isoformat()
            last = datetime.fromtimestamp(t_max, tz=timezone.utc).date().isoformat()
            figures["time_span_days"] = round((t_max - t_min) / 86400, 2)
            figures["first_day"], figures["last_day"] = first, last
            message += f" (unix seconds: {first} to {last}, {figures['time_span_days']:g} days)"
        tied = frame.duplicated([uid, time_field], keep=False).to_numpy()
        tied_users = frame.loc[tied, uid].nunique()
        figures["users_with_tied_timestamps"] = int(tied_users)
        if tied_users:
            report.add(WARN, "timestamp", f"{message}; {tied_users} user(s) have interactions with equal "
                                          f"timestamps ({_lines(atomic.line_no[tied])}): their order in the "
                                          "leave-one-out split is not defined by time; break the ties")
        else:
            report.add(OK, "timestamp", message)

    if len(short):
        report.add(WARN, "sequence length", f"{len(short)} of {len(lengths)} user(s) have fewer than "
                                            f"{MIN_INTERACTIONS} interactions (e.g. {_items(short.index)}): "
                                            "leave-one-out gives them no validation (2) or no validation and no "
                                            "test item (1); filter with user_inter_num_interval: \"[3,inf)\"")
    else:
        report.add(OK, "sequence length", f"every user has at least {MIN_INTERACTIONS} interactions "
                                          f"(min {figures['min_seq_len']}, avg {figures['avg_seq_len']:g}, "
                                          f"max {figures['max_seq_len']})")
    return atomic


def _check_item_file(path, report, iid, items) -> None:
    if not os.path.exists(path):
        report.add(OK, "item file", f"{path} is absent (optional)")
        return
    atomic = read_atomic(path, report, "item file", {iid: "token"})
    if atomic is None:
        return
    _drop_missing(atomic, (iid,), report, "item file")
    _check_floats(atomic, report, "item file", None)
    duplicated = atomic.frame[iid].duplicated().to_numpy()
    if duplicated.any():
        report.add(FAIL, "item file", f"{path}: {int(duplicated.sum())} duplicate '{iid}' row(s) "
                                      f"({_lines(atomic.line_no[duplicated])}); keep one row per item")
    if items is not None:
        missing = np.setdiff1d(items, atomic.frame[iid].to_numpy())
        report.figures["items_missing_from_item_file"] = int(len(missing))
        if len(missing):
            report.add(WARN, "item file", f"{path} has no row for {len(missing)} item(s) of the .inter: "
                                          f"{_items(missing)}")


def _check_features(path, report, items, feature_dims, dims_source) -> None:
    check = "features"
    try:
        features = read_features(path)
    except FeatureFileError as err:
        report.add(FAIL, check, str(err))
        return
    if items is None:
        report.add(OK, check, f"{path} reads ({len(features.tokens)} items); the .inter is unusable, "
                              "so coverage is not checked")
        return
    row_of = {str(t): r for r, t in enumerate(features.tokens)}
    rows = np.array([row_of.get(str(t), -1) for t in items], dtype=np.int64)
    found = rows >= 0
    report.figures["items_missing_from_feature_file"] = int((~found).sum())
    if not found.all():
        report.add(FAIL, check, f"{path} has no row for {int((~found).sum())} of the {len(items)} item(s) of "
                                f"the .inter: {_items(items[~found])}; regenerate the feature file for this "
                                "dataset (README.md, section 'Feature files')")
    else:
        report.add(OK, check, f"{path}: every one of the {len(items)} item(s) of the .inter has a row "
                              f"(modalities: {', '.join(features.modalities) or 'none'})")

    any_present = np.zeros(len(items), dtype=bool)
    modality_figures = {}
    for modality in features.modalities:
        dim = int(features.tables[modality].shape[1])
        present = np.zeros(len(items), dtype=bool)
        present[found] = features.masks[modality][rows[found]]
        if modality in MODALITIES:
            any_present |= present
        coverage = float(present.mean()) if len(items) else 0.0
        modality_figures[modality] = {"dim": dim, "present": int(present.sum()), "coverage": round(coverage, 4)}
        message = f"dimension {dim}, present for {int(present.sum())} of {len(items)} items " \
                  f"({coverage:.1%})"
        expected = feature_dims.get(modality)
        if expected is not None and expected != dim:
            report.add(FAIL, f"{modality} features", f"{path}: {modality} features have dimension {dim} but "
                                                     f"{dims_source} says {expected}; regenerate the features "
                                                     "with the matching encoder or change feature_dims")
        elif modality not in MODALITIES:
            report.add(WARN, f"{modality} features", f"{message}; MMM4Rec reads only {', '.join(MODALITIES)}: "
                                                     "this modality is ignored")
        elif not present.any():
            report.add(WARN, f"{modality} features", f"{message}: no item has it")
        else:
            report.add(OK, f"{modality} features", message
                       + (f" (matches {dims_source})" if expected is not None else ""))
    for modality in feature_dims:
        if modality not in features.tables:
            report.add(WARN, f"{modality} features", f"{path} has no '{modality}' array although {dims_source} "
                                                     f"lists it: every item uses MMM4Rec's learned 'no {modality}' "
                                                     "vector")
    report.figures["features"] = modality_figures
    without = items[~any_present]
    report.figures["items_without_features"] = int(len(without))
    if len(without):
        report.add(WARN, "features", f"{len(without)} of {len(items)} item(s) have none of "
                                     f"{', '.join(MODALITIES)} present (e.g. {_items(without)}): MMM4Rec "
                                     "represents them by its learned 'missing' vectors only")


# ----------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_mmm4rec.check",
        description="Check a RecBole/MMM4Rec dataset folder (<name>/<name>.inter, .item, .features.npz). "
                    "Exit code 0 when no check fails, 1 otherwise.",
    )
    parser.add_argument("folder", help="the dataset folder, e.g. atomic_data/scientific_mm")
    parser.add_argument("--json", action="store_true", help="print figures and problems as JSON")
    parser.add_argument("--config", default=None,
                        help="dataset yaml with feature_dims (default: properties/dataset/<name>.yaml if present)")
    parser.add_argument("--feature-dims", default=None, type=parse_dims,
                        help="expected dimensions, e.g. text=512,image=512 (overrides the yaml)")
    args = parser.parse_args(argv)
    try:
        report = check_dataset(args.folder, feature_dims=args.feature_dims, config_file=args.config)
    except (FileNotFoundError, ValueError) as err:  # a bad --config
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
