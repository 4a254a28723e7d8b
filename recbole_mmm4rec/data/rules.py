"""What a run needs of its interaction files: fields, separator, model kind and split (``Rules``).

Built from a RecBole ``Config`` for training (:meth:`Rules.from_config`), or from the yaml files alone for
the check tool (:meth:`Rules.from_yaml`: RecBole's defaults < ``properties/overall.yaml`` <
``properties/model/<model>.yaml`` < the dataset's settings, as ``quick_start.build_config`` layers them),
so that both apply the checks of ``data/checks.py`` to the same settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

PROPERTIES = Path(__file__).resolve().parents[2] / "properties"
# leave-one-out mode of eval_args.split -> the splits it holds out of each user's last samples
HELD_OUT = {"valid_and_test": ("valid", "test"), "valid_only": ("valid",), "test_only": ("test",)}


@dataclass(frozen=True)
class Rules:
    """What the checks need to know about a run: the files, their fields and what the model needs."""

    folder: str  # the dataset's folder (RecBole's data_path joined with the dataset name)
    dataset: str
    uid: str = "user_id"
    iid: str = "item_id"
    time: Optional[str] = "timestamp"  # None: TIME_FIELD: ~
    sep: str = "\t"
    encoding: str = "utf-8"
    load_col: Optional[frozenset] = None  # fields RecBole loads from the .inter; None = all
    unload_col: frozenset = frozenset()
    parts: Optional[tuple] = None  # benchmark_filename
    model: str = "MMM4Rec"
    sequential: bool = True
    time_aware: bool = False  # the model reads the history's time gaps
    order: str = "TO"  # eval_args.order
    leave_one_out: Optional[str] = "valid_and_test"  # eval_args.split's LS mode; None: another split
    user_interval: Optional[str] = None  # user_inter_num_interval

    @classmethod
    def from_settings(cls, get: Callable, folder: str, dataset: str, model: str, sequential: bool) -> "Rules":
        """Rules from ``get(key, default)``, which reads a setting of a RecBole Config or a merged yaml dict."""
        load_col, unload_col = get("load_col", None), get("unload_col", None) or {}
        if load_col is not None:
            inter = load_col.get("inter")
            load_col = None if inter == "*" else frozenset(inter or ())
        eval_args = get("eval_args", None) or {}
        split = eval_args.get("split") or {}
        by_user = eval_args.get("group_by", "user") == "user"
        parts, interval = get("benchmark_filename", None), get("user_inter_num_interval", None)
        return cls(
            folder=os.fspath(folder), dataset=dataset, uid=get("USER_ID_FIELD", "user_id"),
            iid=get("ITEM_ID_FIELD", "item_id"), time=get("TIME_FIELD", "timestamp"),
            sep=get("field_separator", None) or "\t", encoding=get("encoding", None) or "utf-8",
            load_col=load_col, unload_col=frozenset(unload_col.get("inter") or ()),
            parts=tuple(parts) if parts else None, model=model, sequential=bool(sequential),
            time_aware=bool(get("time_aware", False)), order=eval_args.get("order", "TO"),
            leave_one_out=split.get("LS") if by_user and split.get("LS") in HELD_OUT else None,
            user_interval=None if interval is None else str(interval),
        )

    @classmethod
    def from_config(cls, config) -> "Rules":
        """Rules of a RecBole ``Config`` (``config['data_path']`` is already the dataset's folder)."""
        from recbole.utils import ModelType

        def get(key, default=None):
            return config[key] if key in config else default

        return cls.from_settings(get, config["data_path"], config["dataset"], config["model"],
                                 config["MODEL_TYPE"] == ModelType.SEQUENTIAL)

    @property
    def paths(self) -> list:
        """The interaction files RecBole reads: ``<dataset>.inter``, or one per ``benchmark_filename`` part."""
        names = [f"{self.dataset}.{part}.inter" for part in self.parts] if self.parts else [f"{self.dataset}.inter"]
        return [os.path.join(self.folder, name) for name in names]

    def loaded(self, types) -> set:
        """The fields of a header (``{name: type}``) that RecBole loads (``load_col``, ``unload_col``)."""
        return {f for f in types if (self.load_col is None or f in self.load_col) and f not in self.unload_col}

    @classmethod
    def from_yaml(cls, folder: str, model: str, dataset_settings: Mapping) -> "Rules":
        """Rules of ``model`` on the dataset folder ``<...>/<name>``, from the yaml files alone."""
        settings = yaml_settings(model, dataset_settings)
        return cls.from_settings(settings.get, folder, os.path.basename(os.path.normpath(folder)), model,
                                 is_sequential(model))



def _yaml(path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def yaml_settings(model: str, dataset_settings: Mapping) -> dict:
    """The settings training would see, from the yaml files alone: RecBole's defaults < ours < the dataset's."""
    import recbole

    recbole_properties = Path(recbole.__file__).parent / "properties"
    layers = [recbole_properties / "overall.yaml", recbole_properties / "model" / f"{model}.yaml",
              recbole_properties / "dataset" / "sample.yaml", PROPERTIES / "overall.yaml",
              PROPERTIES / "model" / f"{model}.yaml"]
    merged = {}
    for layer in [_yaml(path) for path in layers if path.is_file()] + [dict(dataset_settings)]:
        for key, value in layer.items():  # RecBole completes a partial eval_args with the defaults
            merged[key] = {**merged[key], **value} if key == "eval_args" and merged.get(key) else value
    return merged


def is_sequential(model: str) -> bool:
    """Whether ``model`` (ours or RecBole's; an unknown name raises ValueError) is a sequential model."""
    import recbole
    from recbole.utils import ModelType

    from recbole_mmm4rec.quick_start import PLUGINS, check_model_name

    check_model_name(model)
    if model in PLUGINS:
        return getattr(PLUGINS[model][0], "type", None) == ModelType.SEQUENTIAL
    return (Path(recbole.__file__).parent / "model" / "sequential_recommender" / f"{model.lower()}.py").is_file()
