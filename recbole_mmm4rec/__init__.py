"""recbole-mmm4rec: MMM4Rec and friends as RecBole plugin models.

Importing the package applies the RecBole/NumPy/pandas/torch compatibility fixes (``compat``) and
registers the plugin models, datasets and trainers with RecBole, so that RecBole's own entry points
(``run_recbole``, ``create_dataset``) resolve ``--model=MMM4Rec``. Load a saved model with
``recbole_mmm4rec.load_data_and_model`` (``checkpoints``: a checkpoint is read as data and checked).
"""

from recbole_mmm4rec import compat

compat.apply()

from recbole_mmm4rec.trainers import flush_denormals  # noqa: E402

flush_denormals()  # before torch starts its intra-op threads, which inherit it

from recbole_mmm4rec.checkpoints import load_data_and_model, read_checkpoint  # noqa: E402
from recbole_mmm4rec.quick_start import build_config, pretrain, register, run  # noqa: E402

register()
compat.switch_off_anomaly_detection()  # after RecBole's models are importable: fix 6

__version__ = "0.1.0"
__all__ = ["run", "pretrain", "build_config", "register", "load_data_and_model", "read_checkpoint"]
