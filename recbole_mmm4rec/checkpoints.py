"""Checkpoints are data: reading one never runs anything from the file.

torch (``weights_only=True``) only rebuilds tensors, containers and the types allow-listed here. RecBole's
checkpoints pickle its ``Config``, and RecBole treats a Config's contents as code: its constructor
``eval``s strings, some models ``eval`` config values (``KD_DAGFM``: ``eval(config['teacher'])``) and the data
pipeline ``pickle.load``s the caches a config names. So RecBole's ``Config`` is *not* allow-listed. Its
name resolves to ``CheckpointConfig``, a stand-in that

- refuses to be constructed (a pickle's REDUCE would run ``Config.__init__`` with the file's arguments),
- takes its state only if every value is plain data (None, bool, int, float, str, lists, tuples, dicts,
  RecBole's enums, ``torch.device``, NumPy numbers) under the attribute names a ``Config`` has, and
- only for an allowed model: recbole-mmm4rec's own (``quick_start.PLUGINS``) or one the caller named
  (``expecting``; RecBole's trainer names its own model when it reloads its best epoch or resumes).

Only then does it become a RecBole ``Config``, with RecBole's data caches reset (``CACHE_SETTINGS``: the
file's ``checkpoint_dir`` and ``*_save_path`` would tell RecBole's ``create_dataset`` / ``data_preparation``
which pickle to load). RecBole's enums load through functions that look the value
up (an enum class is never allow-listed). ``read_checkpoint`` adds the structure checks and clear messages;
``load_data_and_model`` is the safe counterpart of RecBole's function of that name.
"""

import contextlib
import contextvars
import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from recbole.config import Config
from recbole.utils import enum_type

RECBOLE_FORMAT = "RecBole model file"
PRETRAIN_FORMAT = "pre-training checkpoint"
ANY_MODEL = object()  # allowed-models marker: read as data only, nothing is built from it

# the attributes of a pickled Config (compat.py leaves out model_class and yaml_loader, rebuilt on load)
CONFIG_STATE_KEYS = frozenset({
    "parameters", "file_config_dict", "variable_config_dict", "cmd_config_dict", "external_config_dict",
    "model", "dataset", "internal_config_dict", "final_config_dict",
})
ENUMS = (enum_type.ModelType, enum_type.InputType, enum_type.EvaluatorType, enum_type.FeatureType,
         enum_type.FeatureSource, enum_type.KGDataLoaderState)
PLAIN_LEAVES = (type(None), bool, int, float, str, torch.device, *ENUMS)
MAX_DEPTH = 32
# what a loaded Config never keeps from its file: where RecBole finds and writes its dataset and dataloader
# caches (plain pickles, which it loads with pickle.load)
CACHE_SETTINGS = {"checkpoint_dir": "saved/", "dataset_save_path": None, "dataloaders_save_path": None,
                  "save_dataset": False, "save_dataloaders": False}
ZIP_MAGIC = b"PK\x03\x04"

_expected = contextvars.ContextVar("recbole_mmm4rec_expected_models", default=frozenset())


class CheckpointError(ValueError):
    """A file that is no checkpoint the caller may load; the message (one line) names the file and the problem."""


class WrongModel(CheckpointError):
    """A checkpoint of another model than expected; ``found``, ``kind`` and ``expected`` say which."""

    def __init__(self, message, found, kind, expected):
        super().__init__(message)
        self.found, self.kind, self.expected = found, kind, expected


class ConfigRefused(CheckpointError):
    """Raised while torch unpickles a RecBole ``Config`` that is not plain data or names a model not allowed
    (``model``: its name). Not an ``UnpicklingError``, so torch passes it on unchanged."""

    def __init__(self, message, model=None):
        super().__init__(message)
        self.model = model


@dataclass
class Checkpoint:
    """A checked checkpoint: ``kind`` is RECBOLE_FORMAT or PRETRAIN_FORMAT, ``model`` the model it holds."""

    path: str
    kind: str
    model: str
    state: dict


def plugin_models():
    """The names of recbole-mmm4rec's models (their constructors read config values as data only)."""
    from recbole_mmm4rec.quick_start import PLUGINS  # late: quick_start imports this module's users

    return tuple(PLUGINS)


@contextlib.contextmanager
def expecting(*models):
    """While inside, a checkpoint's Config may also name ``models`` (besides ours); ``ANY_MODEL`` allows any
    (for reading a checkpoint as data only, never to build a model from it)."""
    token = _expected.set(frozenset(models))
    try:
        yield
    finally:
        _expected.reset(token)


def allowed_models():
    """The models a checkpoint's Config may name here: ``ANY_MODEL`` or a frozenset of names."""
    expected = _expected.get()
    return ANY_MODEL if ANY_MODEL in expected else expected | set(plugin_models())


def check_plain(value, where, depth=0):
    """Raise ``ConfigRefused`` unless ``value`` is plain data (PLAIN_LEAVES, NumPy numbers, lists, tuples and
    dicts of them, at most MAX_DEPTH deep). ``where`` names the value in the message."""
    kind = type(value)
    if kind in PLAIN_LEAVES or isinstance(value, (np.bool_, np.number)):
        return
    if depth >= MAX_DEPTH:
        raise ConfigRefused(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if kind in (list, tuple):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]", depth + 1)
    elif kind is dict:
        for key, item in value.items():
            if type(key) not in (str, int, float, bool):
                raise ConfigRefused(f"{where} has a key of type {type(key).__name__}")
            check_plain(item, f"{where}[{key!r}]", depth + 1)
    else:
        raise ConfigRefused(f"{where} is a {kind.__module__}.{kind.__qualname__}, not plain data")


def check_config_state(state):
    """Check a pickled Config's state: a dict of Config's own attributes, every value plain data, one model
    name (a str) in ``model`` and ``final_config_dict['model']``. Returns that name."""
    if type(state) is not dict:
        raise ConfigRefused(f"its Config's state is a {type(state).__name__}, not a dict")
    unknown = sorted(str(key) for key in state if key not in CONFIG_STATE_KEYS)
    if unknown:
        raise ConfigRefused(f"its Config has attributes a RecBole Config does not have: {', '.join(unknown)}")
    final = state.get("final_config_dict")
    if type(final) is not dict:
        raise ConfigRefused("its Config has no final_config_dict (a dict)")
    for key, value in state.items():
        check_plain(value, f"config.{key}")
    model = final.get("model")
    if type(model) is not str or state.get("model", model) != model:
        raise ConfigRefused(f"its Config names no single model (model {state.get('model')!r}, "
                            f"final_config_dict['model'] {model!r})")
    return model


class CheckpointConfig(Config):
    """What torch's ``weights_only`` unpickler builds under the name of RecBole's ``Config``.

    It is never constructed; its state is checked (``check_config_state``) and must name an allowed model
    (``allowed_models``); then it becomes a RecBole ``Config`` holding that data."""

    def __init__(self, *args, **kwargs):
        raise ConfigRefused("it asks to construct RecBole's Config, whose constructor evaluates strings; "
                            "a Config in a checkpoint must be stored as data")

    def __setstate__(self, state):
        model = check_config_state(state)
        allowed = allowed_models()
        if allowed is not ANY_MODEL and model not in allowed:
            raise ConfigRefused(f"its Config names model {model!r}, not one of {', '.join(sorted(allowed))}",
                                model=model)
        self.__dict__.update(state)
        self.final_config_dict.update(CACHE_SETTINGS)
        self.__class__ = Config  # from here on RecBole's own class, with checked data
        self.yaml_loader = self._build_yaml_loader()
        self.model_class = None  # resolved again by name wherever RecBole needs it


def _enum_loader(enum):
    """A function that returns ``enum(value)``: what a pickled member of ``enum`` is loaded with."""

    def load(value):
        return enum(value)

    load.__name__ = load.__qualname__ = f"load_{enum.__name__}"
    return load


def allow_checkpoint_globals():
    """Register with torch's ``weights_only`` unpickler what RecBole's checkpoints hold: the Config (as
    ``CheckpointConfig``), RecBole's enums (as lookups by value) and NumPy scalars (best_valid_score)."""
    numpy_scalars = [np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType, np.dtypes.Int64DType,
                     np._core.multiarray.scalar]
    stand_ins = [(CheckpointConfig, f"{Config.__module__}.{Config.__qualname__}")]
    stand_ins += [(_enum_loader(e), f"{e.__module__}.{e.__qualname__}") for e in ENUMS]
    torch.serialization.add_safe_globals([*stand_ins, *numpy_scalars])


def _unreadable(path, error):
    """The reason a file could not be loaded, in one line."""
    if isinstance(error, OSError):
        return f"{type(error).__name__}: {error.strerror or error}"
    with open(path, "rb") as f:
        head = f.read(8)
    text = str(error).strip()
    if not head.startswith(ZIP_MAGIC) and not head.startswith(b"\x80"):
        return f"not a torch file: a torch checkpoint is a zip archive, this file starts with {head!r}"
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = next((line for line in text.split(marker)[1].splitlines() if line.strip()), "").strip()
        return f"it holds objects that are not plain data: {reason.split(' Please use')[0]}"[:300]
    first = text.splitlines()[0].split(". ")[0] if text else type(error).__name__
    return f"truncated or corrupt: {first}"[:300]


def _load(path, map_location):
    """torch.load with weights_only=True; every failure but a refused Config becomes a CheckpointError."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint: an interrupted save, copy or "
                              "download?")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except ConfigRefused:
        raise
    except Exception as error:  # truncated, not a torch file, objects torch refuses, ...
        raise CheckpointError(f"{path} is not a readable checkpoint ({_unreadable(path, error)})") from None


def _check_tensors(path, table, what):
    """Raise CheckpointError unless ``table`` (entry ``what`` of ``path``) maps names to tensors."""
    if not isinstance(table, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in table.items()):
        raise CheckpointError(f"{path}: '{what}' is not a dict of named tensors")


def describe(path, state):
    """-> Checkpoint: which format ``state`` has and which model it holds; raises CheckpointError for
    anything else."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a RecBole or pre-training checkpoint: it holds a "
                              f"{type(state).__name__}, not a dict")
    if "encoder" in state:
        _check_tensors(path, state["encoder"], "encoder")
        for domain, table in (state.get("item_tables") or {}).items():
            _check_tensors(path, table, f"item_tables[{domain!r}]")
        model = state.get("model", "MMM4Rec")  # pre-training checkpoints before UniSRec were MMM4Rec's
        if not isinstance(model, str):
            raise CheckpointError(f"{path}: 'model' is a {type(model).__name__}, not a model name")
        return Checkpoint(path, PRETRAIN_FORMAT, model, state)
    if "state_dict" in state:
        _check_tensors(path, state["state_dict"], "state_dict")
        if type(state.get("config")) is not Config:
            raise CheckpointError(f"{path}: a RecBole model file needs 'config', a RecBole Config; it holds "
                                  f"{type(state.get('config')).__name__}")
        return Checkpoint(path, RECBOLE_FORMAT, state["config"]["model"], state)
    raise CheckpointError(f"{path} is not a RecBole or pre-training checkpoint: a dict without 'state_dict' "
                          f"or 'encoder' (keys: {', '.join(map(str, list(state)[:10]))})")


def _wrong_model(path, found, kind, expect_model):
    """WrongModel for ``path``, a ``kind`` of model ``found``, where ``expect_model`` (None: ours) was wanted."""
    expected = expect_model or f"one of recbole-mmm4rec's models ({', '.join(plugin_models())})"
    return WrongModel(f"{path} is a {found} {kind}; expected {expected} (a model is built from a checkpoint's "
                      f"config only if it is one of ours or the one you name: expect_model={found!r} if you trust "
                      "this file)", found, kind, expected)


def read_checkpoint(path, expect_model=None, *, any_model=False, map_location="cpu"):
    """Load ``path`` as data and check it -> ``Checkpoint``.

    ``expect_model``: the model it must hold; None: one of recbole-mmm4rec's models. ``any_model=True``:
    whichever model it holds (only for reading its tensors; build nothing from its config).
    Raises FileNotFoundError, or CheckpointError (WrongModel for another model) naming the file."""
    path = os.fspath(path)
    allowed = (ANY_MODEL,) if any_model else (expect_model,) if expect_model else ()
    try:
        with expecting(*allowed):
            checkpoint = describe(path, _load(path, map_location))
    except ConfigRefused as error:
        if error.model is not None:
            raise _wrong_model(path, error.model, RECBOLE_FORMAT, expect_model) from None
        raise CheckpointError(f"{path} is refused as a checkpoint: {error}") from None
    wanted = (expect_model,) if expect_model else plugin_models()
    if not any_model and checkpoint.model not in wanted:
        raise _wrong_model(path, checkpoint.model, checkpoint.kind, expect_model)
    return checkpoint


def _device(config):
    """The checkpoint's device where this machine has it, else the CPU."""
    device = torch.device(config["device"] or "cpu")
    return device if device.type != "cuda" or torch.cuda.is_available() else torch.device("cpu")


@contextlib.contextmanager
def _without_caches(config):
    """RecBole's data pipeline without its dataset and dataloader caches (plain pickles: loading one runs
    it), not even those in the caller's own ``saved/``: an empty ``checkpoint_dir`` while inside."""
    with tempfile.TemporaryDirectory(prefix="recbole_mmm4rec_load_") as empty:
        for key, value in {**CACHE_SETTINGS, "checkpoint_dir": empty}.items():
            config[key] = value
        yield


def load_data_and_model(model_file, expect_model=None, checkpoint_dir=CACHE_SETTINGS["checkpoint_dir"]):
    """RecBole's ``load_data_and_model`` that treats the file as data -> (config, model, dataset, train_data,
    valid_data, test_data).

    ``expect_model``: the model the file must hold (None: one of recbole-mmm4rec's models). The model is
    built only after ``read_checkpoint``'s checks; the dataset is built from ``data_path`` without RecBole's
    pickled caches; the returned config's ``checkpoint_dir`` is ``checkpoint_dir`` (not the file's) and
    logging stays as the caller set it up."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    checkpoint = read_checkpoint(model_file, expect_model)
    if checkpoint.kind != RECBOLE_FORMAT:
        raise CheckpointError(f"{checkpoint.path} is a {checkpoint.kind} of {checkpoint.model}: an encoder, not "
                              "a trained model; fine-tune from it with --pretrained")
    config, state = checkpoint.state["config"], checkpoint.state
    model_class = get_model(checkpoint.model)
    if config["MODEL_TYPE"] != model_class.type:
        raise CheckpointError(f"{checkpoint.path}: its config says MODEL_TYPE {config['MODEL_TYPE']}, but "
                              f"{checkpoint.model} is a {model_class.type} model")
    config["device"] = _device(config)
    init_seed(config["seed"], config["reproducibility"])
    with _without_caches(config):
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
    config["checkpoint_dir"] = checkpoint_dir
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train_data._dataset).to(config["device"])
    model.load_state_dict(state["state_dict"])
    model.load_other_parameter(state.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
