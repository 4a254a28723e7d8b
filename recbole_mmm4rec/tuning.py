"""Hyperparameter sweeps with RecBole's params files, run by hyperopt or Ray Tune (``run_hyper.py``).

    python run_hyper.py --model=MMM4Rec --dataset=scientific_mm --params_file=hyper.test --tool=hyperopt
    python run_hyper.py --model=SASRec --params_file=my.test --tool=ray --algo=random --max_evals=20

A sweep is: the fixed settings (the ``--config_files`` and ``--key=value`` overrides, as RecBole reads
them) + one set of params per trial, drawn from the params file. Every trial is ``recbole_mmm4rec.run``
(RecBole's training with early stopping on ``valid_metric``, then the full-sort test), so our plugin
models and RecBole's built-ins tune alike.

- ``--tool=hyperopt``: trials one after another in this process; ``--algo`` exhaustive (every
  combination of the ``choice`` params), random or bayes (TPE), drawn with the config's ``seed``.
- ``--tool=ray``: Ray Tune runs the trials in parallel (``--cpus_per_trial``, ``--gpus_per_trial``) on
  this machine or on a running cluster (``--ray_address=host:port``); each trial reports its validation
  after every evaluated epoch and ASHA stops the bad ones. ``--algo`` exhaustive or random (our own
  seeded draws, so that a resumed sweep draws the same trials).

Outputs, next to ``--output_file`` (default ``hyper/<model>-<dataset>.md``): the markdown table of every
trial, the same as ``.csv``, ``-best.yaml`` (the fixed settings, the best params and the seed: give it
to ``run_recbole.py --config_files``) and ``-trials.json``, the journal: each trial's result keyed by its
params, rewritten atomically after every trial. Rerunning the same command skips the trials in the
journal (failed ones are tried again).

RecBole 1.2.1's own ray path (``run_hyper.py --tool=Ray``) no longer runs with the Ray its pin allows
on NumPy 2; this module replaces it and keeps RecBole's params-file format and flags.
"""

import argparse
import csv
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import yaml

import recbole_mmm4rec  # NumPy 2 fixes before Ray or RecBole are imported
from recbole_mmm4rec.compat import write_text_atomically
from recbole_mmm4rec.tuning_space import draw, grid, hyperopt_space, key, plain, read_params_file
from recbole_mmm4rec.tuning_trial import failed, no_command_line, run_trial

import ray  # noqa: E402  (after the NumPy fixes: ray.tune 2.6.3 uses np.bool8)
from ray import air, tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler  # noqa: E402

FINISHED = ("finished", "stopped early")  # what a resumed sweep skips; "failed" trials run again


# ---------------------------------------------------------------------------------------- the sweep
class Sweep:
    """The fixed settings, the journal of finished trials and the output files of one sweep."""

    def __init__(self, model, dataset, config_files=(), overrides=None, output_file=None):
        self.model, self.dataset = model, dataset
        config, self.fixed = _fixed_settings(model, dataset, list(config_files), dict(overrides or {}))
        self.valid_metric = config["valid_metric"].lower()
        self.bigger = config["valid_metric_bigger"]
        self.seed = config["seed"]
        self.reproducibility = config["reproducibility"]
        self.epochs = config["epochs"]
        self.markdown = Path(output_file or f"hyper/{model}-{dataset}.md").resolve()
        stem = self.markdown.with_suffix("")
        self.csv = stem.with_name(stem.name + ".csv")
        self.best_yaml = stem.with_name(stem.name + "-best.yaml")
        self.journal = stem.with_name(stem.name + "-trials.json")
        self.ray_storage = stem.with_name(stem.name + "-ray")
        self.settings = json.loads(json.dumps({"model": model, "dataset": dataset, "fixed": self.fixed}))
        self.trials = self._read_journal()

    def _read_journal(self):
        if not self.journal.is_file():
            return {}
        saved = json.loads(self.journal.read_text())
        old, new = saved["settings"], self.settings
        if old != new:
            differ = [k for k in ("model", "dataset") if old[k] != new[k]]
            differ += sorted(k for k in set(old["fixed"]) | set(new["fixed"]) if old["fixed"].get(k) != new["fixed"].get(k))
            raise ValueError(f"{self.journal} was written by a sweep with different {', '.join(differ)}: its "
                             "results cannot be reused. Choose another --output_file or delete it to start over.")
        return {key(t["params"]): t for t in saved["trials"]}

    def finished(self, params):
        """The journal's record of these params if they already ran to the end (or ASHA stopped them)."""
        record = self.trials.get(key(params))
        return record if record and record["status"] in FINISHED else None

    def add(self, record):
        """Journal one trial (atomically) and rewrite the results and the best config."""
        self.trials[key(record["params"])] = record
        write_text_atomically(self.journal, json.dumps(
            {"settings": self.settings, "trials": list(self.trials.values())}, indent=1))
        self.write_results()

    def best(self):
        done = [t for t in self.trials.values() if t["status"] == "finished"]
        if not done:
            return None
        return (max if self.bigger else min)(done, key=lambda t: t["best_valid_score"])

    def write_results(self):
        rows = self.table()
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomically(self.csv, table.getvalue())
        best = self.best()
        summary = f"Selected on valid {self.valid_metric} ({'higher' if self.bigger else 'lower'} is better)."
        if best:
            summary += f" Best: trial {list(self.trials.values()).index(best) + 1}, config `{self.best_yaml.name}`."
        lines = [f"# {self.model} on {self.dataset}: {len(rows)} trials", "", summary, "",
                 "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row.values()) + " |" for row in rows]
        write_text_atomically(self.markdown, "\n".join(lines) + "\n")
        if best:
            self.write_best_yaml(best)

    def table(self):
        """One row per trial: params, status, epochs, valid and test metrics, seconds."""
        names = list(dict.fromkeys(n for t in self.trials.values() for n in t["params"]))
        metrics = list(dict.fromkeys(m for t in self.trials.values() for m in t.get("valid", {})))
        best = self.best()
        rows = []
        for number, trial in enumerate(self.trials.values(), start=1):
            row = {"trial": number, **{n: trial["params"].get(n, "") for n in names},
                   "status": trial["status"] + (" (best)" if trial is best else ""), "epochs": trial.get("epochs", "")}
            row.update({f"valid {m}": trial.get("valid", {}).get(m, "") for m in metrics})
            row.update({f"test {m}": trial.get("test", {}).get(m, "") for m in metrics})
            row["seconds"] = trial.get("seconds", "")
            if any("error" in t for t in self.trials.values()):
                row["error"] = trial.get("error", "")
            rows.append(row)
        return rows

    def write_best_yaml(self, best):
        """The fixed settings + the best params + the seed: ``run_recbole.py --config_files`` reruns it."""
        settings = {**self.fixed, **best["params"]}
        settings.setdefault("seed", self.seed)
        settings.setdefault("reproducibility", self.reproducibility)
        valid, test = best["valid"].get(self.valid_metric), best["test"].get(self.valid_metric)
        header = (f"# Best of {len(self.trials)} trials of {self.model} on {self.dataset}: valid "
                  f"{self.valid_metric} {valid}, test {test} (all trials: {self.markdown.name}).\n"
                  f"# Reproduce: python run_recbole.py --model={self.model} --dataset={self.dataset} "
                  f"--config_files={self.best_yaml}\n")
        write_text_atomically(self.best_yaml, header + yaml.safe_dump(plain(settings), sort_keys=False))


def _fixed_settings(model, dataset, config_files, overrides):
    """What the user fixed: their yaml files, then ``--key=value``, with values as RecBole reads them.

    Returns (RecBole's Config with these settings, the settings). Building the Config checks the model
    name, the files and the values up front; it must not leave CUDA_VISIBLE_DEVICES set in this process
    (RecBole's Config sets it), or a local Ray would see one GPU only.
    """
    for file in config_files:
        if not os.path.isfile(file):
            raise FileNotFoundError(f"--config_files: {file} does not exist")
    cuda_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        with no_command_line():
            config = recbole_mmm4rec.build_config(model, dataset, config_files, overrides)
    finally:
        if cuda_visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible
    fixed = {}
    for file in config_files:
        with open(file, encoding="utf-8") as f:
            content = yaml.load(f, Loader=config.yaml_loader) or {}
        if not isinstance(content, dict):
            raise ValueError(f"{file}: expected a yaml mapping of config keys")
        fixed.update(content)
    fixed.update(config.variable_config_dict)  # the overrides, converted the way RecBole converts them
    if "data_path" in fixed:  # Ray trials run in their own folders: the path must not depend on the cwd
        fixed["data_path"] = os.path.abspath(config["data_path"])
    return config, plain(fixed)


# ---------------------------------------------------------------------------------------- hyperopt
def run_hyperopt(sweep, space, algo="exhaustive", max_evals=100):
    """Trials one after another with hyperopt's ``fmin``; journaled params are answered from the journal
    (so a resumed sweep replays the same suggestions, TPE included, without training again)."""
    try:
        import hyperopt
    except ImportError as error:
        raise ImportError("--tool=hyperopt needs hyperopt 0.2.5: pip install -e '.[tune]'") from error
    from recbole.trainer.hyper_tuning import exhaustive_search

    if algo == "exhaustive":
        max_evals = len(grid(space))  # also checks that every parameter is a choice
        suggest = lambda *args: exhaustive_search(*args, nbMaxSucessiveFailures=1000)  # noqa: E731
    else:
        suggest = {"random": hyperopt.rand.suggest, "bayes": hyperopt.tpe.suggest}[algo]

    def objective(params):
        params = plain(params)
        record = sweep.finished(params)
        if record is None:
            print(f"trial {len(sweep.trials) + 1}: {params}", flush=True)
            try:
                record = run_trial(sweep.model, sweep.dataset, sweep.fixed, params)
            except Exception as error:  # noqa: BLE001  a bad combination must not end the sweep
                traceback.print_exc()
                record = failed(params, error)
            sweep.add(record)
            _print_record(sweep, record)
        if record["status"] != "finished":
            return {"status": hyperopt.STATUS_FAIL}
        score = record["best_valid_score"]
        return {"loss": -score if sweep.bigger else score, "status": hyperopt.STATUS_OK}

    hyperopt.fmin(objective, hyperopt_space(space), algo=suggest, max_evals=max_evals,
                  rstate=np.random.RandomState(sweep.seed), show_progressbar=False)


def _print_record(sweep, record):
    if record["status"] == "failed":
        print(f"  failed: {record['error']}", flush=True)
    else:
        print(f"  {record['status']} after {record['epochs']} epochs: valid {sweep.valid_metric} "
              f"{record['valid'].get(sweep.valid_metric)}, test {record['test'].get(sweep.valid_metric, '-')}",
              flush=True)


# ---------------------------------------------------------------------------------------- Ray Tune
def prepare_worker():
    """Ray's ``worker_process_setup_hook``: runs first in every Ray worker (a fresh interpreter).
    Unpickling this function imports ``recbole_mmm4rec``, which applies the NumPy/RecBole fixes and
    registers our models before Ray Tune or RecBole are imported there."""
    recbole_mmm4rec.register()


def ray_trial(config):
    """One trial in a Ray worker: reports the best validation so far after every evaluated epoch (ASHA
    may stop the trial there), then the whole record."""
    from ray.air import session

    def report(epoch, score, result):
        session.report({"epoch": epoch, "valid_score": score, "valid": result})

    gpus = ",".join(str(g) for g in ray.get_gpu_ids())  # RecBole sets CUDA_VISIBLE_DEVICES from gpu_id
    fixed = {**config["fixed"], "gpu_id": gpus}
    record = run_trial(config["model"], config["dataset"], fixed, config["params"], report)
    # the record as one JSON string: Ray would flatten a dict into dozens of columns in its tables
    session.report({"epoch": record["epochs"], "valid_score": record["best_valid_score"],
                    "record": json.dumps(record)})


class JournalCallback(tune.Callback):
    """Journals each trial in the driver as soon as it ends (finished, stopped by ASHA or failed)."""

    def __init__(self, sweep):
        self.sweep = sweep

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        if "record" in result:
            record = json.loads(result["record"])
        elif "valid" in result:
            record = {"params": trial.config["params"], "status": "stopped early", "epochs": result["epoch"],
                      "best_valid_score": result["valid_score"], "valid": result["valid"], "test": {},
                      "seconds": round(result.get("time_total_s", 0.0), 1)}
        else:
            record = failed(trial.config["params"], RuntimeError("the trial ended without reporting"))
        self.sweep.add(record)
        _print_record(self.sweep, record)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.sweep.add(failed(trial.config["params"], RuntimeError(f"see {trial.error_file}")))


def run_ray(sweep, space, algo="exhaustive", max_evals=100, ray_address=None, cpus_per_trial=1,
            gpus_per_trial=0, max_concurrent=0, scheduler="asha", grace_period=1, reduction_factor=2):
    """The sweep's unfinished trials as one Ray Tune experiment (a grid over their params)."""
    if algo == "bayes":
        raise ValueError("--algo=bayes is for --tool=hyperopt; with --tool=ray use exhaustive or random")
    candidates = grid(space) if algo == "exhaustive" else draw(space, max_evals, sweep.seed)
    pending = [params for params in candidates if sweep.finished(params) is None]
    print(f"{len(candidates) - len(pending)} of {len(candidates)} trials already in {sweep.journal}", flush=True)
    if not pending:
        return
    epochs = max(int(params.get("epochs", sweep.epochs)) for params in pending)
    asha = ASHAScheduler(
        time_attr="epoch", metric="valid_score", mode="max" if sweep.bigger else "min",
        max_t=epochs + 1,  # never stop at the last epoch: the trial still has its test to report
        grace_period=grace_period, reduction_factor=reduction_factor)
    tuner = tune.Tuner(
        tune.with_resources(ray_trial, {"cpu": cpus_per_trial, "gpu": gpus_per_trial}),
        param_space={"model": sweep.model, "dataset": sweep.dataset, "fixed": sweep.fixed,
                     "params": tune.grid_search(pending)},
        tune_config=tune.TuneConfig(scheduler=asha if scheduler == "asha" else None,
                                    max_concurrent_trials=max_concurrent or None,
                                    reuse_actors=False,  # a fresh process per trial: no state left by a stopped one
                                    trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=air.RunConfig(storage_path=str(sweep.ray_storage), name=time.strftime("sweep-%Y%m%d-%H%M%S"),
                                 callbacks=[JournalCallback(sweep)], verbose=1),
    )
    started_here = not ray.is_initialized()
    if started_here:
        # "local": a fresh Ray on this machine, even where `ray start` left a cluster running
        ray.init(address=ray_address or "local", include_dashboard=False,
                 runtime_env={"worker_process_setup_hook": prepare_worker})
    try:
        tuner.fit()
    finally:
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------------------------------- entry points
def sweep(model, dataset, params_file, config_files=(), overrides=None, tool="hyperopt", output_file=None,
          **options):
    """Run (or resume) a sweep; returns the ``Sweep`` (``.best()``, ``.trials``, output paths).

    ``options``: ``algo``, ``max_evals`` and, for Ray, ``ray_address``, ``cpus_per_trial``,
    ``gpus_per_trial``, ``max_concurrent``, ``scheduler``, ``grace_period``, ``reduction_factor``.
    """
    space = read_params_file(params_file)
    result = Sweep(model, dataset, config_files, overrides, output_file)
    if tool == "hyperopt":
        unknown = set(options) - {"algo", "max_evals"}
        if unknown:
            raise ValueError(f"{', '.join(sorted(unknown))}: options of --tool=ray")
        run_hyperopt(result, space, **options)
    elif tool == "ray":
        run_ray(result, space, **options)
    else:
        raise ValueError(f"--tool must be hyperopt or ray, got {tool!r}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="MMM4Rec", help="model name (ours first, then RecBole's)")
    parser.add_argument("--dataset", "-d", default="scientific_mm", help="dataset folder under data_path")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files (fixed settings)")
    parser.add_argument("--params_file", default="hyper.test", help="the search space, RecBole's format")
    parser.add_argument("--tool", default="hyperopt", type=str.lower, choices=["hyperopt", "ray"])
    parser.add_argument("--algo", default="exhaustive", choices=["exhaustive", "random", "bayes"],
                        help="exhaustive: every combination of the choices; bayes: hyperopt's TPE")
    parser.add_argument("--max_evals", "--num_samples", type=int, default=100, dest="max_evals",
                        help="trials for random/bayes (exhaustive runs the whole grid)")
    parser.add_argument("--output_file", default=None, help="results table (default hyper/<model>-<dataset>.md)")
    ray_flags = parser.add_argument_group("--tool=ray")
    ray_flags.add_argument("--ray_address", default=None, help="host:port of a running Ray cluster's head")
    ray_flags.add_argument("--cpus_per_trial", type=float, default=1)
    ray_flags.add_argument("--gpus_per_trial", type=float, default=0)
    ray_flags.add_argument("--max_concurrent", type=int, default=0, help="0: as many as the resources allow")
    ray_flags.add_argument("--scheduler", default="asha", choices=["asha", "fifo"], help="fifo: no early stopping")
    ray_flags.add_argument("--grace_period", type=int, default=1, help="ASHA: epochs before a trial may stop")
    ray_flags.add_argument("--reduction_factor", type=float, default=2, help="ASHA: keep 1/factor at each rung")
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for arg in rest:
        name, equals, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not name or not equals:
            parser.error(f"unrecognized argument {arg!r} (config overrides are --key=value)")
        overrides[name] = value

    options = {"algo": args.algo, "max_evals": args.max_evals}
    if args.tool == "ray":
        options.update(ray_address=args.ray_address, cpus_per_trial=args.cpus_per_trial,
                       gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
                       scheduler=args.scheduler, grace_period=args.grace_period,
                       reduction_factor=args.reduction_factor)
    config_files = args.config_files.split() if args.config_files else ()
    result = sweep(args.model, args.dataset, args.params_file, config_files, overrides, args.tool,
                   args.output_file, **options)
    best = result.best()
    print(f"\n{len(result.trials)} trials: {result.markdown} and {result.csv.name}")
    if best is None:
        print("no trial finished")
        return 1
    print(f"best params: {best['params']}")
    print(f"best valid: {best['valid']}\ntest: {best['test']}")
    print(f"best config: {result.best_yaml}\n  python run_recbole.py --model={result.model} "
          f"--dataset={result.dataset} --config_files={result.best_yaml}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
