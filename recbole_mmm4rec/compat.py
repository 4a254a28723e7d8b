"""RecBole 1.2.1 on today's NumPy 2, pandas 3, torch >= 2.6 and setuptools: every fix in one place.

RecBole 1.2.1 (the last release) predates these libraries. Each fix below names what breaks and is
pinned by a test in ``tests/test_compat.py``. ``apply()`` is idempotent and runs when
``recbole_mmm4rec`` is imported, before any RecBole module; Ray workers are fresh interpreters and must
call it again (``import recbole_mmm4rec`` does).

1. NumPy 2 removed aliases that RecBole (``Config.compatibility_settings``, ``evaluator/metrics.py``)
   and ray 2.6.3 (``np.bool8`` in its TensorBoard logger, imported by ``recbole.quick_start``) use.
2. pandas 3 is copy-on-write: ``df[col].fillna(..., inplace=True)`` fills a temporary copy, so
   ``Dataset._fill_nan`` silently leaves NaN in float fields and ``Dataset._load_feat`` crashes on an
   empty ``token_seq``/``float_seq`` cell (NaN has no ``.split``).
3. torch >= 2.6 loads with ``weights_only=True``; RecBole checkpoints pickle the ``Config``, which holds
   a model class and a yaml loader, so the test evaluation after training fails. We keep the safe loader:
   ``Config`` pickles without those two attributes (they are rebuilt on load) and only ``Config``,
   RecBole's enums and NumPy scalars are allow-listed.
4. ``Trainer._save_checkpoint`` writes in place (a crash mid-write leaves a broken file) with pickle
   protocol 4 (which torch's ``weights_only`` loader rejects). It now writes torch's default protocol to
   a temporary file and renames it (atomic on POSIX).
"""

import os

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


def apply():
    """Apply every fix once (before RecBole is imported, ideally)."""
    global _applied
    if _applied:
        return
    _add_numpy_aliases()
    _fix_pandas_copy_on_write()
    _make_config_weights_only_loadable()
    _make_checkpoint_writes_atomic()
    _applied = True


def _add_numpy_aliases():
    for old, new in _NUMPY_ALIASES.items():
        if not hasattr(np, old):
            setattr(np, old, getattr(np, new))


def _fix_pandas_copy_on_write():
    import pandas as pd
    from recbole.data.dataset import dataset as dataset_module
    from recbole.utils import FeatureType

    def _fill_nan(self):
        """RecBole's imputation, assigning columns instead of filling copies in place."""
        for feat_name in self.feat_name_list:
            feat = getattr(self, feat_name)
            for field in feat:
                ftype = self.field2type[field]
                if ftype == FeatureType.TOKEN:
                    feat[field] = feat[field].fillna(value=0)
                elif ftype == FeatureType.FLOAT:
                    feat[field] = feat[field].fillna(value=feat[field].mean())
                else:
                    dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                    feat[field] = feat[field].apply(
                        lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x
                    )

    class _PandasWithFilledSeqColumns:
        """``pandas`` as RecBole's dataset module sees it: ``read_csv`` fills empty sequence cells.

        Atomic-file headers are ``name:type``; an empty ``token_seq``/``float_seq`` cell becomes ""
        (RecBole's intended value) instead of NaN.
        """

        def __getattr__(self, name):
            return getattr(pd, name)

        @staticmethod
        def read_csv(*args, **kwargs):
            df = pd.read_csv(*args, **kwargs)
            for column in df.columns:
                if str(column).endswith("_seq"):
                    df[column] = df[column].fillna("")
            return df

    dataset_module.Dataset._fill_nan = _fill_nan
    dataset_module.pd = _PandasWithFilledSeqColumns()


def _make_config_weights_only_loadable():
    import torch
    from recbole.config import Config
    from recbole.utils import enum_type

    unpicklable = ("model_class", "yaml_loader")

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in unpicklable}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.yaml_loader = self._build_yaml_loader()
        self.model_class = None  # resolved again by name wherever RecBole needs it

    Config.__getstate__ = __getstate__
    Config.__setstate__ = __setstate__
    enums = [enum_type.ModelType, enum_type.InputType, enum_type.EvaluatorType,
             enum_type.FeatureType, enum_type.FeatureSource, enum_type.KGDataLoaderState]
    numpy_scalars = [np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType,
                     np.dtypes.Int64DType, np._core.multiarray.scalar]
    torch.serialization.add_safe_globals([Config, *enums, *numpy_scalars])


def _make_checkpoint_writes_atomic():
    import torch
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
