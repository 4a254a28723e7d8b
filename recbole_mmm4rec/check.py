"""Check a dataset folder end to end before training on it.

    python -m recbole_mmm4rec.check PATH/TO/DATASET_FOLDER [--model MMM4Rec] [--json] [--config FILE]
        [--feature-dims text=512,image=512]

The folder's name is the dataset's name: ``<name>/<name>.inter`` (required), ``<name>/<name>.item``
(optional), ``<name>/<name>.features.npz`` (required, format: ``recbole_mmm4rec/data/features.py``) and
``<name>/<name>.tokens.npz`` (token-level features, optional, checked when present; format:
``recbole_mmm4rec/data/tokens.py``). The settings are those training would use, read from the yaml files
alone: RecBole's defaults < ``properties/overall.yaml`` < ``properties/model/<model>.yaml`` <
``properties/dataset/<name>.yaml`` (or ``--config``); ``--feature-dims`` overrides ``feature_dims``.
``--model`` (default MMM4Rec) says what the data must serve: every sequential model needs a time field.

Prints one line per check (``OK``, ``WARN`` or ``FAIL``, what is wrong and how to fix it) and the
dataset's figures; ``--json`` prints the same as JSON. Exit code 0 when no check FAILs, 1 otherwise.

Only pandas/NumPy reading: no RecBole dataset is built, so the check takes about a second (a second or
two more to read a 100 MB token file). The rules for the ``.inter`` are those training applies before
RecBole loads it (``recbole_mmm4rec/data/checks.py``).

What FAILs (RecBole or MMM4Rec would stop, or silently load wrong data): a missing or unparsable
``.inter``, a header field that is not ``name:type`` with a RecBole type, a byte order mark, a missing
user/item field, no (loaded) ``timestamp:float`` field while the model needs one (every sequential model:
RecBole orders each history by time), a row whose column count differs from the header's, an empty or
NaN-like user/item/time cell, a float cell that is not a number, a missing or invalid feature file, an
item of the ``.inter`` without a row in the feature file, a feature dimension other than ``feature_dims``;
a token file that is present but invalid (NaN/inf in a real token, lengths out of range, shapes that
disagree, duplicate items) or lacks an item of the ``.inter``.

What WARNs (training runs, but probably not as intended): users with too few interactions for the
leave-one-out split (a sequential model needs 4 for a training, a validation and a test item: 1 puts a
user in no split, 2 in train only, 3 in train and test; filter them with ``user_inter_num_interval:
"[4,inf)"``), equal timestamps within a user (the split's order among them is not defined by time),
empty cells of other float fields (RecBole fills in the mean), items without any modality present, a
modality of ``feature_dims`` the file lacks, a modality MMM4Rec does not read, items of the ``.inter``
missing from the ``.item``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from recbole_mmm4rec.data import checks
from recbole_mmm4rec.data.atomic_report import (FAIL, OK, WARN, Atomic, Report, check_floats, drop_missing,
                                                read_atomic, show_items)
from recbole_mmm4rec.data.features import FEATURE_SUFFIX, FeatureFileError, read_features
from recbole_mmm4rec.data.rules import PROPERTIES, Rules
from recbole_mmm4rec.data.tokens import TOKENS_SUFFIX, read_tokens

MODALITIES = ("text", "image")  # what MMM4Rec reads (recbole_mmm4rec/data/dataset.py)

# ----------------------------------------------------------------------------- config


def dataset_config(name: str, config_file: Optional[str] = None) -> tuple:
    """(settings, path) from ``config_file`` or ``properties/dataset/<name>.yaml``; ({}, None) if neither."""
    path = config_file or str(PROPERTIES / "dataset" / f"{name}.yaml")
    if not os.path.isfile(path):
        if config_file:
            raise FileNotFoundError(f"config file {config_file} does not exist")
        return {}, None
    import yaml

    with open(path, encoding="utf-8") as handle:
        return (yaml.safe_load(handle) or {}), path


def parse_dims(text: str) -> dict:
    """``'text=512,image=512'`` (or JSON) -> ``{'text': 512, 'image': 512}``."""
    text = text.strip()
    if text.startswith("{"):
        return {str(k): int(v) for k, v in json.loads(text).items()}
    dims = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        dims[key.strip()] = int(value)
    return dims


# ----------------------------------------------------------------------------- the check


def check_dataset(
    folder,
    feature_dims: Optional[Mapping[str, int]] = None,
    config_file: Optional[str] = None,
    use_config: bool = True,
    model: str = "MMM4Rec",
) -> Report:
    """Check ``folder`` (``<...>/<name>/``) for ``model`` and return the :class:`Report`.

    ``feature_dims`` overrides the one of the dataset's yaml (``config_file``, default
    ``properties/dataset/<name>.yaml``); ``use_config=False`` ignores the dataset's yaml altogether.
    """
    folder = os.path.normpath(os.fspath(folder))
    name = os.path.basename(folder)
    report = Report(dataset=name, folder=folder)
    if not os.path.isdir(folder):
        report.add(FAIL, "folder", f"{folder} is not a folder; pass the dataset folder, e.g. atomic_data/{name}")
        return report

    settings, settings_path = dataset_config(name, config_file) if use_config else ({}, None)
    rules = Rules.from_yaml(folder, model, settings)
    dims_source = "--feature-dims"
    if feature_dims is None and settings.get("feature_dims"):
        feature_dims, dims_source = settings["feature_dims"], f"feature_dims in {settings_path}"
    feature_dims = {str(k): int(v) for k, v in (feature_dims or {}).items()}

    inter = _check_inter(os.path.join(folder, name + ".inter"), report, rules)
    items = None
    if inter is not None:
        items = pd.unique(inter.frame[rules.iid])
    _check_item_file(os.path.join(folder, name + ".item"), report, rules, items)
    _check_features(os.path.join(folder, name + FEATURE_SUFFIX), report, items, feature_dims, dims_source)
    _check_token_file(os.path.join(folder, name + TOKENS_SUFFIX), report, items)
    return report


def _check_inter(path, report, rules: Rules) -> Optional[Atomic]:
    if rules.parts:
        report.add(WARN, "interactions", f"benchmark_filename is set: training reads {', '.join(rules.paths)}, "
                                         f"this tool checks only {path}")
    atomic = read_atomic(path, report, "interactions", {}, rules.sep)
    if atomic is None:
        return None
    problems = checks.id_problems(path, atomic.types, rules)
    for problem in problems:
        report.add(FAIL, "interactions", problem)
    if problems:
        return None
    drop_missing(atomic, (rules.uid, rules.iid), report, "interactions", rules)
    problem = checks.time_problem(path, atomic.types, rules)
    loaded = rules.loaded(atomic.types)
    has_time = rules.time in loaded and atomic.types[rules.time] == "float"
    check_floats(atomic, report, "interactions", rules, rules.time if has_time else None, loaded)
    frame = atomic.frame
    if has_time:
        frame = frame[np.isfinite(frame[rules.time].to_numpy(dtype=float))]
    if not len(frame):
        report.add(FAIL, "interactions", f"{path} has no usable interaction rows")
        return atomic
    _inter_figures(frame, report, rules)
    if problem:
        report.add(FAIL, "timestamp", problem)
    elif has_time:
        _time_figures(frame, atomic.line_no, report, rules)
    else:
        report.add(OK, "timestamp", f"no time field loaded ({'TIME_FIELD: ~' if rules.time is None else path}); "
                                    f"{rules.model} does not need one with these settings")
    _short_users(frame, report, rules)
    return atomic


def _inter_figures(frame, report, rules: Rules) -> None:
    lengths = frame.groupby(rules.uid, sort=False).size()
    figures = report.figures
    figures["users"] = int(len(lengths))
    figures["items"] = int(frame[rules.iid].nunique())
    figures["interactions"] = int(len(frame))
    figures["avg_seq_len"] = round(float(lengths.mean()), 4)
    figures["min_seq_len"] = int(lengths.min())
    figures["max_seq_len"] = int(lengths.max())


def _time_figures(frame, line_no, report, rules: Rules) -> None:
    """Time span (as dates when the times look like unix seconds) and equal times within a user."""
    figures, time_field = report.figures, rules.time
    times = frame[time_field].to_numpy(dtype=float)
    t_min, t_max = float(times.min()), float(times.max())
    figures["time_min"], figures["time_max"], figures["time_span"] = t_min, t_max, t_max - t_min
    message = f"'{time_field}' from {t_min:g} to {t_max:g}"
    if t_min >= 1e8:  # looks like unix seconds (after 1973)
        first = datetime.fromtimestamp(t_min, tz=timezone.utc).date().isoformat()
        last = datetime.fromtimestamp(t_max, tz=timezone.utc).date().isoformat()
        figures["time_span_days"] = round((t_max - t_min) / 86400, 2)
        figures["first_day"], figures["last_day"] = first, last
        message += f" (unix seconds: {first} to {last}, {figures['time_span_days']:g} days)"
    tied = frame.duplicated([rules.uid, time_field], keep=False).to_numpy()
    tied_users = frame.loc[tied, rules.uid].nunique()
    figures["users_with_tied_timestamps"] = int(tied_users)
    if tied_users:
        report.add(WARN, "timestamp", f"{message}; {tied_users} user(s) have interactions with equal "
                                      f"timestamps ({checks.where(line_no[frame.index], tied)}): their order in the "
                                      "leave-one-out split is not defined by time; break the ties")
    else:
        report.add(OK, "timestamp", message)


def _short_users(frame, report, rules: Rules) -> None:
    if rules.leave_one_out is None:
        return
    needed = checks.needed_interactions(rules.leave_one_out, rules.sequential)
    message, count = checks.short_users(frame[rules.uid], rules)
    report.figures[f"users_with_fewer_than_{needed}_interactions"] = count
    figures = report.figures
    if message:
        report.add(WARN, "sequence length", message)
    elif figures["min_seq_len"] < needed:
        report.add(OK, "sequence length", f"users with fewer than {needed} interactions are filtered out "
                                          f"(user_inter_num_interval: {rules.user_interval})")
    else:
        report.add(OK, "sequence length", f"every user has at least {needed} interactions "
                                          f"(min {figures['min_seq_len']}, avg {figures['avg_seq_len']:g}, "
                                          f"max {figures['max_seq_len']})")


def _check_item_file(path, report, rules: Rules, items) -> None:
    iid = rules.iid
    if not os.path.exists(path):
        report.add(OK, "item file", f"{path} is absent (optional)")
        return
    atomic = read_atomic(path, report, "item file", {iid: "token"}, rules.sep)
    if atomic is None:
        return
    drop_missing(atomic, (iid,), report, "item file", rules)
    check_floats(atomic, report, "item file", rules, None)
    duplicated = atomic.frame[iid].duplicated().to_numpy()
    if duplicated.any():
        report.add(FAIL, "item file", f"{path}: {int(duplicated.sum())} duplicate '{iid}' row(s) "
                                      f"({checks.where(atomic.line_no, duplicated)}); keep one row per item")
    if items is not None:
        missing = items[~pd.Series(items).isin(atomic.frame[iid]).to_numpy()]  # setdiff1d: 2 s on movielens
        report.figures["items_missing_from_item_file"] = int(len(missing))
        if len(missing):
            report.add(WARN, "item file", f"{path} has no row for {len(missing)} item(s) of the .inter: "
                                          f"{show_items(missing)}")


def _rows_of_items(path, report, check, file_tokens, items, modalities, rebuild):
    """Rows of the .inter's ``items`` in a file holding ``file_tokens`` (-1 = absent), reported as OK or FAIL."""
    row_of = {str(t): r for r, t in enumerate(file_tokens)}
    rows = np.array([row_of.get(str(t), -1) for t in items], dtype=np.int64)
    found = rows >= 0
    if not found.all():
        report.add(FAIL, check, f"{path} has no row for {int((~found).sum())} of the {len(items)} item(s) of "
                                f"the .inter: {show_items(items[~found])}; {rebuild}")
    else:
        report.add(OK, check, f"{path}: every one of the {len(items)} item(s) of the .inter has a row "
                              f"(modalities: {', '.join(modalities) or 'none'})")
    return rows, found


def _read_for_check(path, report, check, read, items):
    """``read(path)``, or None after reporting: FAIL when it cannot be read, OK without coverage when the
    .inter is unusable (``items`` None)."""
    try:
        content = read(path)
    except FeatureFileError as err:
        report.add(FAIL, check, str(err))
        return None
    if items is None:
        report.add(OK, check, f"{path} reads ({len(content.tokens)} items); the .inter is unusable, "
                              "so coverage is not checked")
        return None
    return content


def _check_features(path, report, items, feature_dims, dims_source) -> None:
    check = "features"
    features = _read_for_check(path, report, check, read_features, items)
    if features is None:
        return
    rows, found = _rows_of_items(path, report, check, features.tokens, items, features.modalities,
                                 "regenerate the feature file for this dataset (README.md, section 'Feature files')")
    report.figures["items_missing_from_feature_file"] = int((~found).sum())

    any_present = np.zeros(len(items), dtype=bool)
    modality_figures = {}
    for modality in features.modalities:
        dim = int(features.tables[modality].shape[1])
        present = np.zeros(len(items), dtype=bool)
        present[found] = features.masks[modality][rows[found]]
        if modality in MODALITIES:
            any_present |= present
        coverage = float(present.mean()) if len(items) else 0.0
        modality_figures[modality] = {"dim": dim, "present": int(present.sum()), "coverage": round(coverage, 4)}
        message = f"dimension {dim}, present for {int(present.sum())} of {len(items)} items " \
                  f"({coverage:.1%})"
        expected = feature_dims.get(modality)
        if expected is not None and expected != dim:
            report.add(FAIL, f"{modality} features", f"{path}: {modality} features have dimension {dim} but "
                                                     f"{dims_source} says {expected}; regenerate the features "
                                                     "with the matching encoder or change feature_dims")
        elif modality not in MODALITIES:
            report.add(WARN, f"{modality} features", f"{message}; MMM4Rec reads only {', '.join(MODALITIES)}: "
                                                     "this modality is ignored")
        elif not present.any():
            report.add(WARN, f"{modality} features", f"{message}: no item has it")
        else:
            report.add(OK, f"{modality} features", message
                       + (f" (matches {dims_source})" if expected is not None else ""))
    for modality in feature_dims:
        if modality not in features.tables:
            report.add(WARN, f"{modality} features", f"{path} has no '{modality}' array although {dims_source} "
                                                     f"lists it: every item uses MMM4Rec's learned 'no {modality}' "
                                                     "vector")
    report.figures["features"] = modality_figures
    without = items[~any_present]
    report.figures["items_without_features"] = int(len(without))
    if len(without):
        report.add(WARN, "features", f"{len(without)} of {len(items)} item(s) have none of "
                                     f"{', '.join(MODALITIES)} present (e.g. {show_items(without)}): MMM4Rec "
                                     "represents them by its learned 'missing' vectors only")


def _check_token_file(path, report, items) -> None:
    """The token-level feature file, when there is one: valid, and a row for every item of the .inter."""
    check = "tokens"
    if not os.path.exists(path):
        report.add(OK, check, f"{path} is absent (optional: token-level features, built by "
                              "feature_extraction/encode_text.py --tokens or by the models that need them)")
        return
    item_tokens = _read_for_check(path, report, check, read_tokens, items)
    if item_tokens is None:
        return
    rows, found = _rows_of_items(path, report, check, item_tokens.tokens, items, item_tokens.modalities,
                                 "rebuild it (feature_extraction/encode_text.py FOLDER --tokens --force)")
    figures = {}
    for modality, states in item_tokens.states.items():
        lengths = item_tokens.lengths[modality][rows[found]]
        present = lengths > 0
        figures[modality] = {"dim": int(states.shape[2]), "positions": int(states.shape[1]),
                             "present": int(present.sum()),
                             "mean_length": round(float(lengths[present].mean()), 2) if present.any() else 0.0}
        report.add(OK, f"{modality} tokens", f"dimension {states.shape[2]}, up to {states.shape[1]} tokens per item "
                                             f"(mean {figures[modality]['mean_length']:g}), present for "
                                             f"{int(present.sum())} of {len(items)} items")
    report.figures["tokens"] = figures


# ----------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_mmm4rec.check",
        description="Check a RecBole/MMM4Rec dataset folder (<name>/<name>.inter, .item, .features.npz, "
                    ".tokens.npz). "
                    "Exit code 0 when no check fails, 1 otherwise.",
    )
    parser.add_argument("folder", help="the dataset folder, e.g. atomic_data/scientific_mm")
    parser.add_argument("--model", default="MMM4Rec",
                        help="the model the data is for (default MMM4Rec): every sequential model needs a time field")
    parser.add_argument("--json", action="store_true", help="print figures and problems as JSON")
    parser.add_argument("--config", default=None,
                        help="dataset yaml with feature_dims (default: properties/dataset/<name>.yaml if present)")
    parser.add_argument("--feature-dims", default=None, type=parse_dims,
                        help="expected dimensions, e.g. text=512,image=512 (overrides the yaml)")
    args = parser.parse_args(argv)
    try:
        report = check_dataset(args.folder, feature_dims=args.feature_dims, config_file=args.config,
                               model=args.model)
    except (FileNotFoundError, ValueError) as err:  # a bad --config or --model
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
