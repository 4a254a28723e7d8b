"""What the importers share (amazon2018.py, import_*.py): finding source files and writing the converted dataset.

Every file is written to a temporary file beside its destination and renamed into place
(``os.replace``), so an interrupted conversion never leaves a half-written ``.inter``, ``.item``
or ``.stats.json`` under the final name.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from typing import Callable, Iterable

INTER_HEADER = ["user_id:token", "item_id:token", "timestamp:float"]
ITEM_HEADER = ["item_id:token", "text:token_seq"]


class SourceFormatError(ValueError):
    """The source folder is incomplete, or a file in it is missing or malformed."""


def require(path: str) -> str:
    """``path`` if it is a file, else a SourceFormatError naming it."""
    if not os.path.isfile(path):
        raise SourceFormatError(f"{path}: required file is missing")
    return path


def atomic_write(path: str, write: Callable) -> None:
    """Call ``write(handle)`` on a temporary text file next to ``path``, then rename it to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_rows(path: str, header: list, rows: Iterable) -> int:
    """A RecBole atomic file: ``header`` and one tab-separated line per row, atomically; returns the row count."""
    count = 0

    def write(handle):
        nonlocal count
        handle.write("\t".join(header) + "\n")
        for row in rows:
            handle.write("\t".join(str(value) for value in row) + "\n")
            count += 1

    atomic_write(path, write)
    return count


def write_json(path: str, data: dict) -> None:
    atomic_write(path, lambda handle: handle.write(json.dumps(data, indent=2) + "\n"))


def infer_prefix(src_dir: str, suffix: str) -> str:
    """The ``<P>`` of the single ``<P><suffix>`` file in ``src_dir`` (e.g. suffix ``.train.inter``)."""
    found = sorted(glob.glob(os.path.join(src_dir, "*" + suffix)))
    if len(found) != 1:
        raise SourceFormatError(f"{src_dir}: expected exactly one '*{suffix}' file to infer the prefix from, found "
                                f"{[os.path.basename(f) for f in found]}; pass --prefix")
    return os.path.basename(found[0])[: -len(suffix)]


def size(path: str) -> str:
    return f"{os.path.getsize(path) / 1e6:.2f} MB"
