"""Item features built when they are missing, by ``feature_extraction/encode_text.py`` run in-process.

A dataset whose yaml sets ``build_text_features: True`` (e.g. ``games``: its feature file is too large to
commit) gets ``<name>.features.npz`` from its ``<name>.item`` texts the first time it is loaded
(:func:`ensure_text_features`); TAME's token file is built the same way (``tokens.ensure_text_tokens``).
The default encoder is the offline all-MiniLM-L6-v2, the one of every bundled dataset.
"""

import contextlib
import fcntl
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable

from recbole_mmm4rec.data.features import FEATURE_SUFFIX, FeatureFileError

ENCODE_TEXT = Path(__file__).resolve().parents[2] / "feature_extraction" / "encode_text.py"


def encode_text_script(what: str = "text features"):
    """``feature_extraction/encode_text.py`` (a script, not a package module), loaded once from its path."""
    module = sys.modules.get("encode_text")
    if module is not None and Path(getattr(module, "__file__", "")).resolve() == ENCODE_TEXT:
        return module
    if not ENCODE_TEXT.is_file():
        raise FeatureFileError(f"Cannot build {what}: {ENCODE_TEXT} is not there (it ships with the source "
                               "checkout); make the file with that script and put it next to the atomic files")
    spec = importlib.util.spec_from_file_location("encode_text", ENCODE_TEXT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["encode_text"] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def one_builder(folder: str, log: Callable = print):
    """Let one process at a time build ``folder``'s feature files (torchrun ranks, parallel benchmark
    cells on a fresh clone): an exclusive ``flock`` on the folder itself, so no lock file is left behind.
    A process that has to wait logs it, then finds the file up to date and keeps it."""
    if not os.path.isdir(folder):  # the encoder names the missing folder
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is building the features of {folder}: waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def ensure_text_features(folder: str, log: Callable = print) -> str:
    """Build ``folder/<name>.features.npz`` from ``folder/<name>.item`` unless it is already there for exactly
    those items (``encode_text.py`` without ``--force``: a log line and a progress bar, written atomically).
    Returns the feature file's path."""
    name = os.path.basename(os.path.normpath(folder))
    path = os.path.join(folder, name + FEATURE_SUFFIX)
    encode_text = encode_text_script()
    if not os.path.isfile(path):
        log(f"{path} is missing: encoding the item texts of {folder} (build_text_features: True)")
    try:
        with one_builder(folder, log):
            encode_text.encode_dataset(folder, log=log)
    except encode_text.EncodeError as err:
        raise FeatureFileError(f"Cannot build the text features of {folder}: {err}") from err
    return path
