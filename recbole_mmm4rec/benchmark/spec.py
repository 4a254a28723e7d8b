"""The benchmark file (``benchmarks/<name>.yaml``): models, datasets with their budget, seeds, overrides.

Every problem stops loading with an error naming the file and the field, e.g.
``benchmarks/x.yaml: datasets.scientific_mm.epochs: required (the training budget of this dataset)``.
See ``recbole_mmm4rec/benchmark/__init__.py`` for the format.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from recbole_mmm4rec.quick_start import PRETRAINABLE, PROJECT_ROOT, PROPERTIES, check_model_name, pretrain_run_dir

TABLE_METRICS = ("recall@10", "recall@50", "ndcg@10", "ndcg@50")
TOP_LEVEL_KEYS = ("description", "models", "datasets", "seeds", "config", "model_config", "variants", "reference",
                  "pretrain", "encoders_dir")
VARIANT_KEYS = ("model", "config_files", "config", "pretrained", "compare_to")
VARIANT_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # also a folder name of the results
PER_CELL_KEYS = ("model", "dataset", "seed")  # the runner sets these for every cell
BUDGET_KEYS = ("epochs", "stopping_step")  # one budget per dataset, the same for every model


class SpecError(ValueError):
    def __init__(self, path, field, problem):
        super().__init__(f"{path}: {field}: {problem}")


@dataclass(frozen=True)
class Benchmark:
    path: Path
    models: tuple  # model names, ours or RecBole's
    datasets: dict  # dataset -> its budget and config overrides
    seeds: tuple
    config: dict  # overrides for every cell
    model_config: dict  # model -> {"config_files": [...], "config": {...}}
    reference: dict  # dataset -> {"source": str, "models": {label: {metric: value}}}
    description: str = ""
    variants: dict = None  # row label -> the model it runs (a variant's settings are in model_config)
    pretrain: dict = None  # encoder label -> {"model", "corpus": {target: [datasets]}, "config_files", "config"}
    pretrained: dict = None  # row label -> the encoder label it fine-tunes from (a variant's `pretrained`)
    compare_to: dict = None  # row label -> its from-scratch row (transfer report: epochs to its best)
    encoders_dir: Path = None  # where ``pretrain``'s encoders go (default ``pretrained/<name>/``)

    def model_of(self, label):
        """The model a row of ``models`` trains: itself, or the model of the variant of that label."""
        return (self.variants or {}).get(label, label)

    @property
    def name(self):
        return self.path.stem

    @property
    def default_out(self):
        """Where results go without ``--out``: ``results/<name>/`` next to the benchmark file."""
        return self.path.parent / "results" / self.name

    def cells(self):
        """Every (model, dataset, seed), one seed of every dataset and model after the other, so that an
        interrupted run already compares all models on all datasets."""
        return [(m, d, s) for s in self.seeds for d in self.datasets for m in self.models]

    def settings(self, model, dataset, seed):
        """What ``run()`` gets for this cell. Later wins: common config < dataset budget < model config < seed;
        a row with ``pretrained`` fine-tunes from that encoder's checkpoint for this dataset."""
        per_model = self.model_config.get(model, {})
        config = {**self.config, **self.datasets[dataset], **per_model.get("config", {}), "seed": seed}
        if model in (self.pretrained or {}):  # from the project root when inside it, as the config files
            config["pretrained"] = _portable(self.encoder_checkpoint(self.pretrained[model], dataset))
        return {"config_files": list(per_model.get("config_files", [])), "config": config}

    def encoder_dir(self, label, target):
        """The checkpoint_dir of encoder ``label`` pre-trained for ``target``: ``<encoders_dir>/<label>-for-<target>/``."""
        return (self.encoders_dir or PROJECT_ROOT / "pretrained" / self.name) / f"{label}-for-{target}"

    def encoder_checkpoint(self, label, target):
        """Its ``best.pth`` (in the run folder that ``--stage=pretrain`` makes inside ``encoder_dir``)."""
        entry = self.pretrain[label]
        folder = {"checkpoint_dir": str(self.encoder_dir(label, target))}
        return Path(pretrain_run_dir(folder, entry["model"], entry["corpus"][target])) / "best.pth"


def load(path):
    """Read and validate a benchmark file; returns a ``Benchmark``."""
    path = Path(path)
    raw = _read_yaml(path)
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise SpecError(path, unknown[0], f"unknown key (allowed: {', '.join(TOP_LEVEL_KEYS)})")
    for key in ("models", "datasets", "seeds"):
        if key not in raw:
            raise SpecError(path, key, "required")
    variants = _variants(path, raw.get("variants") or {})
    models = _models(path, raw["models"], variants)
    pretrain = _pretrain(path, raw.get("pretrain") or {})
    config = _overrides(path, "config", raw.get("config") or {}, forbidden=PER_CELL_KEYS + BUDGET_KEYS)
    datasets = {name: _dataset(path, name, budget, config)
                for name, budget in _mapping(path, "datasets", raw["datasets"], non_empty=True).items()}
    return Benchmark(
        path=path,
        models=models,
        datasets=datasets,
        seeds=_seeds(path, raw["seeds"]),
        config=config,
        model_config={**_model_config(path, raw.get("model_config") or {}, models),
                      **_model_config(path, {k: v["settings"] for k, v in variants.items()}, models, "variants")},
        reference=_reference(path, raw.get("reference") or {}, datasets),
        description=str(raw.get("description") or ""),
        variants={label: v["model"] for label, v in variants.items()},
        pretrain=pretrain,
        pretrained=_pretrained_rows(path, variants, pretrain, datasets),
        compare_to=_compare_to(path, variants, models),
        encoders_dir=_encoders_dir(path, raw.get("encoders_dir")),
    )


def _portable(path):
    """``path`` relative to the project root when it is inside it (a cell's settings then hold in any clone)."""
    path = Path(path)
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def resolve(path_text):
    """A relative path from the working directory if it exists there, else from the project root."""
    path = Path(path_text).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path


def _read_yaml(path):
    if not path.is_file():
        raise SpecError(path, "file", "not found")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as error:
        raise SpecError(path, "file", f"not valid yaml ({error})") from None
    if not isinstance(raw, dict):
        raise SpecError(path, "file", "expected a mapping with the keys models, datasets and seeds")
    return raw


class _Loader(yaml.SafeLoader):
    """yaml's safe loader that also reads ``1e-3`` as a number, as RecBole's config files do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def _mapping(path, field, value, non_empty=False):
    if not isinstance(value, dict) or (non_empty and not value):
        raise SpecError(path, field, f"expected a {'non-empty ' if non_empty else ''}mapping, got {value!r}")
    return value


def _unique_list(path, field, value, item_type):
    if not isinstance(value, list) or not value:
        raise SpecError(path, field, f"expected a non-empty list, got {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, item_type) or isinstance(item, bool):
            raise SpecError(path, f"{field}[{i}]", f"expected {item_type.__name__}, got {item!r}")
    duplicates = sorted({str(item) for item in value if value.count(item) > 1})
    if duplicates:
        raise SpecError(path, field, f"listed twice: {', '.join(duplicates)}")
    return tuple(value)


def _models(path, value, variants):
    models = _unique_list(path, "models", value, str)
    for i, model in enumerate(models):
        if model in variants:
            continue
        try:
            check_model_name(model)
        except ValueError as error:
            raise SpecError(path, f"models[{i}]", str(error)) from None
    return models


def _seeds(path, value):
    return _unique_list(path, "seeds", value, int)


def _overrides(path, field, value, forbidden):
    _mapping(path, field, value)
    for key in value:
        if key in forbidden:
            where = "the seeds list" if key == "seed" else (
                "the datasets section (one budget per dataset)" if key in BUDGET_KEYS else "the runner")
            raise SpecError(path, f"{field}.{key}", f"not allowed here: set by {where}")
    return dict(value)


def _dataset(path, name, budget, config):
    field = f"datasets.{name}"
    budget = _overrides(path, field, budget, forbidden=PER_CELL_KEYS)
    epochs, stopping = budget.get("epochs"), budget.get("stopping_step")
    if not _integer(epochs, minimum=1):
        raise SpecError(path, f"{field}.epochs", f"required, a positive integer (the budget), got {epochs!r}")
    if not _integer(stopping, minimum=0):
        raise SpecError(path, f"{field}.stopping_step", f"required, an integer >= 0, got {stopping!r}")
    _check_dataset_folder(path, field, name, budget.get("data_path") or config.get("data_path"))
    return budget


def _check_dataset_folder(path, field, name, data_path):
    data_path = data_path or _default_data_path()
    folder = resolve(data_path) / name
    if not (folder / f"{name}.inter").is_file():
        raise SpecError(path, field, f"no dataset folder with {name}.inter at {folder} (data_path: {data_path})")


def _integer(value, minimum):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _default_data_path():
    return yaml.load((PROPERTIES / "overall.yaml").read_text(), Loader=_Loader)["data_path"]


def _variants(path, value):
    """``variants: {label: {model: MMM4Rec, config_files: [...], config: {...}}}``: rows of ``models`` that
    train one model with other settings (e.g. an ablation). Returns label -> {"model", "settings"}."""
    _mapping(path, "variants", value)
    result = {}
    for label, entry in value.items():
        field = f"variants.{label}"
        if not isinstance(label, str) or not VARIANT_LABEL.match(label):
            raise SpecError(path, field, "a label of letters, digits and _.+- (it names a results folder)")
        entry = dict(_mapping(path, field, entry or {}))
        unknown = sorted(set(entry) - set(VARIANT_KEYS))
        if unknown:
            raise SpecError(path, f"{field}.{unknown[0]}", f"unknown key (allowed: {', '.join(VARIANT_KEYS)})")
        model = entry.pop("model", None)
        links = {key: entry.pop(key) for key in ("pretrained", "compare_to") if key in entry}
        if not isinstance(model, str):
            raise SpecError(path, f"{field}.model", f"required: the model this variant trains, got {model!r}")
        try:
            check_model_name(model)
        except ValueError as error:
            raise SpecError(path, f"{field}.model", str(error)) from None
        try:
            check_model_name(label)
        except ValueError:
            result[label] = {"model": model, "settings": entry, **links}
            continue
        raise SpecError(path, field, f"{label!r} is a model's name: give the variant another label")
    return result


def _pretrain(path, value):
    """``pretrain: {label: {model: MMM4Rec, corpus: {target: [datasets]}, config_files, config}}``: encoders
    pre-trained (``--stage=pretrain``) once per target on that target's corpus, for variants to fine-tune from."""
    _mapping(path, "pretrain", value)
    result = {}
    for label, entry in value.items():
        field = f"pretrain.{label}"
        if not isinstance(label, str) or not VARIANT_LABEL.match(label):
            raise SpecError(path, field, "a label of letters, digits and _.+- (it names a folder)")
        entry = dict(_mapping(path, field, entry))
        unknown = sorted(set(entry) - {"model", "corpus", "config_files", "config"})
        if unknown:
            raise SpecError(path, f"{field}.{unknown[0]}", "unknown key (allowed: model, corpus, config_files, config)")
        if entry.get("model") not in PRETRAINABLE:
            raise SpecError(path, f"{field}.model", f"one of {', '.join(PRETRAINABLE)}, got {entry.get('model')!r}")
        corpus = _mapping(path, f"{field}.corpus", entry.get("corpus"), non_empty=True)
        for target, datasets in corpus.items():
            for name in _unique_list(path, f"{field}.corpus.{target}", datasets, str):
                _check_dataset_folder(path, f"{field}.corpus.{target}", name, (entry.get("config") or {}).get("data_path"))
        files = _config_files(path, f"{field}.config_files", entry.get("config_files") or [])
        config = _overrides(path, f"{field}.config", entry.get("config") or {}, forbidden=("model", "dataset"))
        result[label] = {"model": entry["model"], "corpus": {t: list(d) for t, d in corpus.items()},
                         "config_files": files, "config": config}
    return result


def _pretrained_rows(path, variants, pretrain, datasets):
    """Row label -> encoder label; the encoder is of the row's model and pre-trained for every dataset."""
    result = {}
    for label, variant in variants.items():
        if "pretrained" not in variant:
            continue
        field, encoder = f"variants.{label}.pretrained", variant["pretrained"]
        if encoder not in pretrain:
            raise SpecError(path, field, f"{encoder!r} is not in pretrain ({', '.join(pretrain) or 'empty'})")
        if pretrain[encoder]["model"] != variant["model"]:
            raise SpecError(path, field, f"{encoder} pre-trains {pretrain[encoder]['model']}, this row trains "
                                         f"{variant['model']}")
        missing = [d for d in datasets if d not in pretrain[encoder]["corpus"]]
        if missing:
            raise SpecError(path, field, f"{encoder} has no corpus for {', '.join(missing)} (pretrain.{encoder}.corpus)")
        result[label] = encoder
    return result


def _encoders_dir(path, value):
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SpecError(path, "encoders_dir", f"a folder (relative: from the project root), got {value!r}")
    folder = Path(value).expanduser()
    return folder if folder.is_absolute() else PROJECT_ROOT / folder


def _compare_to(path, variants, models):
    result = {}
    for label, variant in variants.items():
        if "compare_to" in variant:
            other = variant["compare_to"]
            if other not in models or other == label:
                raise SpecError(path, f"variants.{label}.compare_to", f"another row of models, got {other!r}")
            result[label] = other
    return result


def _model_config(path, value, models, section="model_config"):
    _mapping(path, section, value)
    result = {}
    for model, entry in value.items():
        field = f"{section}.{model}"
        if model not in models:
            raise SpecError(path, field, f"{model!r} is not in models ({', '.join(models)})")
        entry = _mapping(path, field, entry or {})
        unknown = sorted(set(entry) - {"config_files", "config"})
        if unknown:
            raise SpecError(path, f"{field}.{unknown[0]}", "unknown key (allowed: config_files, config)")
        files = _config_files(path, f"{field}.config_files", entry.get("config_files") or [])
        config = dict(entry.get("config") or {})
        zero_shot = section == "variants" and config.get("epochs") == 0  # a row evaluated without training
        if zero_shot:
            del config["epochs"]
        config = _overrides(path, f"{field}.config", config, forbidden=PER_CELL_KEYS + BUDGET_KEYS)
        result[model] = {"config_files": files, "config": {**config, "epochs": 0} if zero_shot else config}
    return result


def _config_files(path, field, files):
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise SpecError(path, field, f"expected a list of yaml paths, got {files!r}")
    for i, file in enumerate(files):
        if not resolve(file).is_file():
            raise SpecError(path, f"{field}[{i}]", f"no file {file} (nor {resolve(file)})")
    return files


def _reference(path, value, datasets):
    _mapping(path, "reference", value)
    result = {}
    for dataset, entry in value.items():
        field = f"reference.{dataset}"
        if dataset not in datasets:
            raise SpecError(path, field, f"{dataset!r} is not in datasets ({', '.join(datasets)})")
        entry = _mapping(path, field, entry)
        unknown = sorted(set(entry) - {"source", "models"})
        if unknown:
            raise SpecError(path, f"{field}.{unknown[0]}", "unknown key (allowed: source, models)")
        if not isinstance(entry.get("source"), str) or not entry["source"].strip():
            raise SpecError(path, f"{field}.source",
                            "required: where the figures come from, and how that setting differs")
        rows = _mapping(path, f"{field}.models", entry.get("models"), non_empty=True)
        for label, figures in rows.items():
            _mapping(path, f"{field}.models.{label}", figures, non_empty=True)
            for metric, number in figures.items():
                if metric not in TABLE_METRICS:
                    raise SpecError(path, f"{field}.models.{label}.{metric}",
                                    f"unknown metric (allowed: {', '.join(TABLE_METRICS)})")
                if not isinstance(number, (int, float)) or isinstance(number, bool):
                    raise SpecError(path, f"{field}.models.{label}.{metric}", f"expected a number, got {number!r}")
        result[dataset] = {"source": entry["source"].strip(), "models": {str(k): dict(v) for k, v in rows.items()}}
    return result
