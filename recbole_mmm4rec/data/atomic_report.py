"""What :mod:`recbole_mmm4rec.check` reads and fills: an atomic file parsed line by line, and the report.

:func:`read_atomic` keeps every well-formed row as strings with its line number, so each problem a check
finds (here or in ``check.py``) names the file, the field and the lines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from recbole_mmm4rec.data import checks
from recbole_mmm4rec.data.checks import SHOW, InteractionDataError, parse_header
from recbole_mmm4rec.data.rules import Rules

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


def show_items(tokens) -> str:
    tokens = list(tokens)
    shown = ", ".join(repr(str(t)) for t in tokens[:SHOW])
    return shown + (f", … ({len(tokens)} in all)" if len(tokens) > SHOW else "")


@dataclass
class Atomic:
    """The parsed rows of one atomic file: well-formed rows only, as strings."""

    path: str
    types: dict  # field -> RecBole type
    frame: pd.DataFrame  # one column per field (str), rows with the header's column count
    line_no: np.ndarray  # file line number (1-based, header = 1) of each row of ``frame``


def read_atomic(path: str, report: Report, check: str, required: Mapping[str, str], sep: str = "\t"
                ) -> Optional[Atomic]:
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
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    try:
        types = parse_header(path, lines[0] if lines else "", sep)
    except InteractionDataError as err:
        report.add(FAIL, check, str(err))
        return None
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
        parts = line.split(sep)
        if len(parts) == n_cols:
            rows.append(parts)
            numbers.append(number)
        else:
            bad.append((number, len(parts)))
    if bad:
        shown = ", ".join(f"line {n} has {k}" for n, k in bad[:SHOW])
        more = f", … ({len(bad)} rows in all)" if len(bad) > SHOW else ""
        report.add(FAIL, check, f"{path}: {len(bad)} row(s) do not have the header's {n_cols} "
                                f"columns: {shown}{more}; fix or remove them (a tab inside a text field splits it)")
    frame = pd.DataFrame(rows, columns=list(types), dtype=object) if rows else pd.DataFrame(columns=list(types))
    atomic = Atomic(path=path, types=types, frame=frame, line_no=np.asarray(numbers, dtype=np.int64))
    if not bad:
        report.add(OK, check, f"{path}: {len(frame)} rows, fields "
                              + ", ".join(f"{k}:{v}" for k, v in types.items()))
    return atomic


def drop_missing(atomic: Atomic, fields, report: Report, check: str, rules: Rules) -> None:
    """Rows with an empty or NaN-like cell in ``fields`` are reported and dropped."""
    for fname in fields:
        missing = checks.missing_mask(atomic.frame[fname])
        if missing.any():
            report.add(FAIL, check, checks.empty_message(atomic.path, fname, rules, atomic.line_no, missing))
            atomic.frame = atomic.frame[~missing].reset_index(drop=True)
            atomic.line_no = atomic.line_no[~missing]


def check_floats(atomic: Atomic, report: Report, check: str, rules: Rules, time_field: Optional[str],
                  loaded: Optional[set] = None) -> None:
    """Float cells (of the ``loaded`` fields; None = all) must be numbers; the time must be present too (its
    column becomes floats)."""
    for fname, ftype in atomic.types.items():
        if ftype != "float" or fname not in atomic.frame or (loaded is not None and fname not in loaded):
            continue
        cells = atomic.frame[fname]
        missing = checks.missing_mask(cells)
        values, bad = checks.float_values(cells, missing)
        if bad.any():
            report.add(FAIL, check, checks.not_number_message(atomic.path, fname, atomic.line_no, bad, cells))
        if fname == time_field and missing.any():
            report.add(FAIL, check, checks.empty_message(atomic.path, fname, rules, atomic.line_no, missing))
        elif missing.any():
            report.add(WARN, check, f"{atomic.path}: field '{fname}' is empty on {int(missing.sum())} line(s) "
                                    f"({checks.where(atomic.line_no, missing)}): RecBole fills them with the "
                                    "column's mean")
        if fname == time_field:
            atomic.frame = atomic.frame.assign(**{fname: values})
