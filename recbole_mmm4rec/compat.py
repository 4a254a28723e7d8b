"""RecBole 1.2.1 on today's NumPy 2, pandas 3, torch >= 2.6 and setuptools: every fix in one place.

RecBole 1.2.1 (the last release) predates these libraries. Each fix below names what breaks and is
pinned by a test in ``tests/test_compat.py``. ``apply()`` is idempotent and runs when
``recbole_mmm4rec`` is imported, before any RecBole module; Ray workers are fresh interpreters and must
call it again (``import recbole_mmm4rec`` does).

1. NumPy 2 removed aliases that RecBole (``Config.compatibility_settings``, ``evaluator/metrics.py``)
   and ray 2.6.3 (``np.bool8`` in its TensorBoard logger, imported by ``recbole.quick_start``) use.
2. pandas 3 breaks RecBole's data pipeline in two ways: ``Series.agg(len)`` now returns the
   Series' length (RecBole uses it per element to remap every ``token_seq`` field), and copy-on-write
   makes ``df[col].fillna(..., inplace=True)`` fill a temporary copy (NaN left in float fields). Too
   many call sites to patch: we require pandas 2 and say so clearly.
3. torch >= 2.6 loads with ``weights_only=True``; RecBole checkpoints pickle the ``Config``, which holds
   a model class and a yaml loader, so the test evaluation after training fails. We keep the safe loader:
   ``Config`` pickles without those two attributes (they are rebuilt on load). ``Config`` itself is NOT
   allow-listed (its constructor ``eval``s strings and RecBole acts on its contents as code): its name
   loads as ``checkpoints.CheckpointConfig``, which accepts plain data naming one of our models or the one
   the caller expects (``checkpoints.expecting``). RecBole's ``Trainer.evaluate`` and ``resume_checkpoint``
   expect the trainer's own model.
4. ``Trainer._save_checkpoint`` writes in place (a crash mid-write leaves a broken file) with pickle
   protocol 4 (which torch's ``weights_only`` loader rejects). It now writes torch's default protocol to
   a temporary file and renames it (atomic on POSIX).
5. PyPI's torchvision 0.28.0 (the one that matches torch 2.13) is a CUDA build: beside a CPU torch its
   C extension does not load and ``import torchvision`` fails ("operator torchvision::nms does not
   exist"), which also breaks ``open_clip``, ``transformers`` and ``sentence_transformers``. When the
   extension cannot load, the two op schemas its Python side expects are defined (no kernels: the
   feature extractors never call them).
6. RecBole's ``sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)`` at import
   time, and importing RecBole's sequential model package (which ``get_model`` does for every sequential
   model, ours included) imports it: every backward pass then checks every tensor for NaN, about a quarter
   of MMM4Rec's CPU time, for RecBole's own models too. ``switch_off_anomaly_detection()`` imports that
   package once and turns anomaly detection off again (``import recbole_mmm4rec`` calls it; losses and
   gradients are bit-identical). Turn it on yourself with ``torch.autograd.set_detect_anomaly(True)``.
"""

import functools
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

# NumPy 1.x names -> their NumPy 2 equivalents.
_NUMPY_ALIASES = {
    "float_": "float64",
    "complex_": "complex128",
    "unicode_": "str_",
    "string_": "bytes_",
    "bool8": "bool_",
    "object0": "object_",
    "int0": "intp",
    "uint0": "uintp",
}

_applied = False
_torchvision_schemas = None  # the torch.library.Library must stay alive for its definitions to hold


def apply():
    """Apply every fix once (before RecBole is imported, ideally)."""
    global _applied
    if _applied:
        return
    _add_numpy_aliases()
    _require_pandas_2()
    _make_config_weights_only_loadable()
    _make_checkpoint_writes_atomic()
    _make_torchvision_importable()
    _applied = True


def switch_off_anomaly_detection():
    """Fix 6: import RecBole's sequential models (and so ``sine.py``'s global switch) now, then undo it."""
    import recbole.model.sequential_recommender  # noqa: F401  (sets set_detect_anomaly(True))
    import torch

    torch.autograd.set_detect_anomaly(False)


def _add_numpy_aliases():
    for old, new in _NUMPY_ALIASES.items():
        if not hasattr(np, old):
            setattr(np, old, getattr(np, new))


def _require_pandas_2():
    import pandas as pd

    if int(pd.__version__.split(".")[0]) >= 3:
        raise ImportError(
            f"recbole-mmm4rec needs pandas < 3 (found {pd.__version__}): RecBole 1.2.1 relies on "
            "Series.agg(len) applying per element and on df[col].fillna(inplace=True), which pandas 3 "
            "changed. Install 'pandas>=2.2,<3'."
        )


def _make_config_weights_only_loadable():
    from recbole.config import Config
    from recbole.trainer import Trainer

    from recbole_mmm4rec.checkpoints import allow_checkpoint_globals

    unpicklable = ("model_class", "yaml_loader")

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in unpicklable}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.yaml_loader = self._build_yaml_loader()
        self.model_class = None  # resolved again by name wherever RecBole needs it

    Config.__getstate__ = __getstate__
    Config.__setstate__ = __setstate__  # plain pickle (RecBole's dataset cache); torch uses CheckpointConfig
    allow_checkpoint_globals()
    for name in ("evaluate", "resume_checkpoint"):
        setattr(Trainer, name, _expecting_own_model(getattr(Trainer, name)))


def _expecting_own_model(method):
    """``method`` of a RecBole trainer, run while checkpoints may hold the trainer's own model."""
    from recbole_mmm4rec.checkpoints import expecting

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with expecting(self.config["model"]):
            return method(self, *args, **kwargs)

    return wrapper


def _make_checkpoint_writes_atomic():
    from recbole.trainer import Trainer

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's checkpoint dict, written to a temporary file and renamed into place."""
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        target = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }
        save_atomically(state, target)
        if verbose:
            self.logger.info(f"Saving current: {target}")

    Trainer._save_checkpoint = _save_checkpoint


def save_atomically(obj, path):
    """``torch.save`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    torch's default pickle protocol, which its ``weights_only`` loader reads (RecBole used protocol 4,
    which it cannot).
    """
    import torch

    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text_atomically(path, text):
    """Write ``text`` to ``path`` (folders created) through a temporary file beside it and ``os.replace``:
    a crash mid-write leaves the previous file, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _make_torchvision_importable():
    global _torchvision_schemas
    spec = importlib.util.find_spec("torchvision")
    if spec is None or "torchvision" in sys.modules or _torchvision_schemas is not None:
        return
    import torch

    folder = spec.submodule_search_locations[0]
    extension = next((f for f in os.listdir(folder) if f.startswith("_C.") and f.endswith(".so")), None)
    try:
        if extension is not None:
            torch.ops.load_library(os.path.join(folder, extension))
            return
    except OSError:
        pass
    _torchvision_schemas = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _torchvision_schemas.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
