"""Run any model, ours or RecBole's, the way RecBole's ``run_recbole`` does, with our defaults.

``register()`` makes RecBole resolve our models by name: each plugin model module is made visible as
``recbole.model.sequential_recommender.<name>`` (where ``get_model`` looks), its dataset class as
``recbole.data.dataset.<Name>Dataset`` (``create_dataset``) and its trainer as
``recbole.trainer.<Name>Trainer`` (``get_trainer``). RecBole's built-ins are untouched, so our names
are found first and every other name falls through to RecBole.
"""

import difflib
import functools
import os
import re
import sys
import tempfile
from logging import getLogger
from pathlib import Path
from time import perf_counter

import recbole
import recbole.data.dataset
import recbole.trainer
import yaml
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_environment, get_model, get_trainer, init_seed, set_color

from recbole_mmm4rec import distributed
from recbole_mmm4rec.data.checks import check_interactions
from recbole_mmm4rec.data.dataset import MultiModalSequentialDataset
from recbole_mmm4rec.fine_tuning import load_pretrained, read_pretrained
from recbole_mmm4rec.history import with_history
from recbole_mmm4rec.layers.config import check_training_config
from recbole_mmm4rec.models import TAME, Mamba4Rec, MMM4Rec, TextSASRec, TiM4Rec, UniSRec
from recbole_mmm4rec.resume import load_resume_point, save_resume_point
from recbole_mmm4rec.trainers import NAdamTrainer, PluginTrainer, Pretrainer

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROPERTIES = PROJECT_ROOT / "properties"

# name -> (model class, dataset class, trainer class)
PLUGINS = {
    "MMM4Rec": (MMM4Rec, MultiModalSequentialDataset, NAdamTrainer),
    "Mamba4Rec": (Mamba4Rec, recbole.data.dataset.SequentialDataset, NAdamTrainer),
    "TiM4Rec": (TiM4Rec, recbole.data.dataset.SequentialDataset, NAdamTrainer),
    "TextSASRec": (TextSASRec, MultiModalSequentialDataset, NAdamTrainer),
    "UniSRec": (UniSRec, MultiModalSequentialDataset, NAdamTrainer),
    "TAME": (TAME, MultiModalSequentialDataset, NAdamTrainer),
}
# the models --stage=pretrain knows (what they provide: trainers.Pretrainer)
PRETRAINABLE = tuple(name for name, (model_class, _, _) in PLUGINS.items() if hasattr(model_class, "ENCODER_KEYS"))


def register():
    """Make RecBole's name lookups find the plugin models, datasets and trainers (idempotent)."""
    for name, (model_class, dataset_class, trainer_class) in PLUGINS.items():
        sys.modules[f"recbole.model.sequential_recommender.{name.lower()}"] = sys.modules[model_class.__module__]
        setattr(recbole.data.dataset, f"{name}Dataset", dataset_class)
        setattr(recbole.trainer, f"{name}Trainer", trainer_class)


RECBOLE_MODEL_PACKAGES = ("general_recommender", "context_aware_recommender", "sequential_recommender",
                          "knowledge_aware_recommender", "exlib_recommender")


@functools.lru_cache(maxsize=1)
def model_names():
    """Every name ``--model`` accepts: ours, then RecBole's built-ins (the class defined in
    ``recbole/model/<package>/<name.lower()>.py``, which is how RecBole's ``get_model`` finds it)."""
    names = list(PLUGINS)  # read once per process: RecBole's model files do not change while it runs
    for package in RECBOLE_MODEL_PACKAGES:
        for path in sorted((Path(recbole.__file__).parent / "model" / package).glob("*.py")):
            names += [name for name in re.findall(r"^class (\w+)\(", path.read_text(encoding="utf-8"), re.M)
                      if name.lower() == path.stem and name not in names]
    return tuple(names)


def check_model_name(model, where="--model"):
    """Fail with a clear message for a name that is neither ours nor RecBole's (names are exact: SASRec,
    not SASrec; RecBole's own lookup would end in an AttributeError or an ImportError of lightgbm)."""
    names = model_names()
    if model in names:
        return
    by_case = [name for name in names if name.lower() == str(model).lower()]
    close = by_case or difflib.get_close_matches(str(model), names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ValueError(
        f"Unknown model {model!r} ({where}): {hint}not a recbole-mmm4rec model ({', '.join(PLUGINS)}) "
        "nor a RecBole built-in (names are case-sensitive, e.g. SASRec, GRU4Rec, Pop)"
    )


def default_config_files(model, dataset):
    """Our yaml defaults for this model and dataset, in RecBole's order: overall < model < dataset."""
    if not PROPERTIES.is_dir():
        raise FileNotFoundError(
            f"{PROPERTIES} is missing: install recbole-mmm4rec from its source tree (pip install -e .)"
        )
    candidates = [
        PROPERTIES / "overall.yaml",
        PROPERTIES / "model" / f"{model}.yaml",
        PROPERTIES / "dataset" / f"{dataset}.yaml",
    ]
    return [str(path) for path in candidates if path.is_file()]


def build_config(model=None, dataset=None, config_file_list=None, config_dict=None):
    """RecBole's ``Config`` over our defaults, then the user's files, dict and command line."""
    register()
    model = model or _command_line_value("model") or "MMM4Rec"
    dataset = dataset or _command_line_value("dataset") or "scientific_mm"
    check_model_name(model)
    files = default_config_files(model, dataset) + list(config_file_list or [])
    for file in files:
        check_yaml_file(file)
    if distributed.launched():  # torchrun: every rank sees every GPU (RecBole's gpu_id default would hide them)
        config_dict = {"gpu_id": distributed.visible_gpus(), **(config_dict or {})}
    config = Config(model=model, dataset=dataset, config_file_list=files, config_dict=config_dict)
    data_path = config["data_path"]
    if not os.path.isabs(data_path) and not os.path.isdir(data_path) and (PROJECT_ROOT / data_path).is_dir():
        config["data_path"] = str(PROJECT_ROOT / data_path)
    check_training_config(config)
    if model in PLUGINS:
        PLUGINS[model][0].check_config(config)
    distributed.setup(config)  # under torchrun: process group, this rank's device, output on rank 0 only
    return config


def check_yaml_file(path):
    """A config file exists and is a yaml mapping; a syntax error names the file (RecBole's does not)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path}: not valid yaml: {error}") from None
    if content is not None and not isinstance(content, dict):
        raise ValueError(f"config file {path}: expected a mapping of config keys (key: value lines), "
                         f"got a {type(content).__name__}")


def check_writable(folder, key):
    """Create ``folder`` if needed and check that a file can be written there, before any training."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise PermissionError(f"{key} = {folder}: cannot write there ({error.strerror or error}); "
                              f"give --{key}=<a writable folder>") from None


def _command_line_value(key):
    for arg in sys.argv[1:]:
        if arg.startswith(f"--{key}="):
            return arg.split("=", 1)[1]
    return None


def run(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, resume_file=None):
    """Train on the train split, select on valid, evaluate on test: RecBole's ``run_recbole`` flow.

    ``epochs: 0`` trains nothing: the model as built (with ``pretrained``, the zero-shot transfer) is
    evaluated on valid and test. Returns RecBole's result dict plus ``epochs``, ``fit_seconds``, ``test_seconds``, ``saved_model_file``,
    ``parameters`` (trainable) and ``history`` (per epoch: train seconds, loss, validation result; for every
    trainer, ours and RecBole's, see ``recbole_mmm4rec.history``).

    ``resume_file``: a path written after every evaluated epoch; a run started again with it continues where
    the last one stopped, with the same result (``recbole_mmm4rec.resume``; one process only). The result's
    ``resumed_after_epoch`` says after which epoch (0-based) this process went on, None for a fresh run.
    """
    config = build_config(model, dataset, config_file_list, config_dict)
    if saved:
        check_writable(config["checkpoint_dir"], "checkpoint_dir")
    if config["pretrained"]:
        read_pretrained(config["pretrained"], config["model"])  # a bad file fails before the data is loaded
    init_seed(config["seed"], config["reproducibility"])
    distributed.init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    check_interactions(config)  # bad ids/times stop here, naming file, line and field

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    if config["pretrained"]:
        load_pretrained(model, config["pretrained"], logger)
    logger.info(model)
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    if distributed.active():
        trainer_class = distributed_trainer(trainer_class, config["model"])
    if config["accumulation_steps"] != 1 and not issubclass(trainer_class, NAdamTrainer):
        raise ValueError(f"accumulation_steps = {config['accumulation_steps']}: only recbole-mmm4rec's models "
                         f"({', '.join(PLUGINS)}) accumulate gradients; {config['model']} trains with RecBole's "
                         f"{trainer_class.__name__}")
    trainer = with_history(trainer_class)(config, model)
    resume_file = resume_file if config["epochs"] and not distributed.active() else None
    resumed = load_resume_point(resume_file, trainer, train_data, logger) if resume_file else None
    earlier = resumed["fit_seconds"] if resumed else 0.0

    start = perf_counter()
    if resumed and resumed["stopped"]:  # trained to the end before: only the test is left
        best_valid_score, best_valid_result = trainer.best_valid_score, trainer.best_valid_result
    elif config["epochs"]:
        def resume_point(epoch, valid_score):  # RecBole calls it at the end of every evaluated epoch
            save_resume_point(resume_file, trainer, train_data, epoch, earlier + perf_counter() - start)

        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"],
            callback_fn=resume_point if resume_file else None,
        )
    else:  # epochs: 0 evaluates the model as built (with `pretrained`: the zero-shot transfer)
        saved, best_valid_result = False, trainer.evaluate(valid_data, load_best_model=False)
        best_valid_score = best_valid_result[config["valid_metric"].lower()]
    fit_seconds = earlier + perf_counter() - start
    start = perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    test_seconds = perf_counter() - start

    logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    epochs = len(trainer.train_loss_dict)
    logger.info(
        set_color("timing", "yellow")
        + f": {epochs} epochs in {fit_seconds:.1f}s ({fit_seconds / max(epochs, 1):.2f}s per epoch with"
        + f" validation); test evaluation (full sort) {test_seconds:.2f}s"
    )
    return {
        "best_valid_score": best_valid_score,
        "valid_metric": config["valid_metric"].lower(),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "epochs": epochs,
        "fit_seconds": fit_seconds,
        "test_seconds": test_seconds,
        "saved_model_file": trainer.saved_model_file if saved else None,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "history": trainer.history,
        "resumed_after_epoch": resumed["epoch"] if resumed else None,
    }


def distributed_trainer(trainer_class, model):
    """The trainer of a torchrun run: ours (``PluginTrainer`` shards batches, wraps the model in DDP and
    evaluates exactly), also for RecBole's models that train with RecBole's plain ``Trainer``."""
    if issubclass(trainer_class, PluginTrainer):
        return trainer_class
    if trainer_class is recbole.trainer.Trainer:
        return NAdamTrainer  # RecBole's Trainer + NAdam and accumulation: the learner is still the config's
    raise ValueError(f"{model} trains with RecBole's {trainer_class.__name__}, which recbole-mmm4rec cannot run "
                     "on several processes (torchrun); run it as one process")


def pretrain(datasets, config_file_list=None, config_dict=None, resume=False, model="MMM4Rec", overwrite=False):
    """Pre-train a model (MMM4Rec, UniSRec) on the union of several datasets (``--stage=pretrain --dataset=A,B``).

    Each dataset keeps its own item space and features; ``properties/pretrain/<model>.yaml`` sits between
    the dataset defaults and the user's files. Checkpoints go to ``<checkpoint_dir>/<model>-pretrain-A+B/``
    (``last.pth`` every epoch, ``best.pth``); ``resume=True`` continues from ``last.pth``. A folder that
    already holds a run is refused unless ``resume`` or ``overwrite`` says what to do with it.
    Returns (history, run folder).
    """
    if model not in PRETRAINABLE:
        raise ValueError(f"--stage=pretrain is for {' and '.join(PRETRAINABLE)}, not {model}")
    if len(set(datasets)) != len(datasets) or not datasets:
        raise ValueError(f"--dataset for pre-training: a comma-separated list of distinct names, got {datasets}")
    files = [str(PROPERTIES / "pretrain" / f"{model}.yaml")] + list(config_file_list or [])
    configs, views, train_sets, valid_loaders = {}, {}, {}, {}
    for name in datasets:
        config = configs[name] = build_config(model, name, files, config_dict)
        if name == datasets[0]:
            if config["epochs"] < 1:
                raise ValueError("--stage=pretrain: epochs must be at least 1 (epochs: 0 evaluates a fine-tuning run)")
            run_dir = pretrain_run_dir(config, model, datasets)
            check_run_dir(run_dir, resume, overwrite)
            distributed.init_logger(config)
            getLogger().info(config)
        check_interactions(config)
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        getLogger().info(dataset)
        train, valid_loaders[name], _ = data_preparation(config, dataset)
        train_sets[name] = train.dataset.inter_feat
        views[name] = get_model(model)(config, train.dataset)
    first = views[datasets[0]]
    for name, view in views.items():  # one encoder for all domains
        _check_same_encoder(datasets[0], first, name, view)
        view.encoder = first.encoder
    config = configs[datasets[0]]
    trainer = Pretrainer(config, views, train_sets, valid_loaders, run_dir)
    getLogger().info(first.encoder)
    history = trainer.fit(config["epochs"], resume=resume, show_progress=config["show_progress"])
    getLogger().info(set_color("pre-training done", "yellow") + f": checkpoints in {run_dir}")
    return history, run_dir


def pretrain_run_dir(config, model, datasets):
    return os.path.join(config["checkpoint_dir"], f"{model}-pretrain-" + "+".join(sorted(datasets)))


def check_run_dir(run_dir, resume, overwrite):
    """Refuse to start a new pre-training over a folder that holds one (its best.pth would be replaced),
    unless ``resume`` (continue it) or ``overwrite`` (replace it) is given; check the folder is writable."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in its folder, --overwrite replaces it: give one of them")
    existing = [name for name in ("best.pth", "last.pth") if os.path.isfile(os.path.join(run_dir, name))]
    if existing and not resume and not overwrite:
        raise FileExistsError(
            f"{run_dir} already holds a pre-training run ({', '.join(existing)}): a new run would replace it. "
            "Give --resume to continue it, --overwrite to replace it, or --checkpoint_dir=<another folder>"
        )
    check_writable(run_dir, "checkpoint_dir")


def _check_same_encoder(name_a, model_a, name_b, model_b):
    shapes_a = {k: v.shape for k, v in model_a.encoder.state_dict().items()}
    shapes_b = {k: v.shape for k, v in model_b.encoder.state_dict().items()}
    if shapes_a != shapes_b:
        dims = {name_a: model_a.feature_dims, name_b: model_b.feature_dims}
        raise ValueError(
            f"Pre-training datasets need the same feature dimensions and model settings: {dims} "
            "(set feature_dims for a modality a dataset lacks, e.g. {text: 384, image: 512})"
        )
