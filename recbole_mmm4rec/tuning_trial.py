"""One trial of a sweep: RecBole's training with early stopping, then the full-sort test, as a record.

Used by :mod:`recbole_mmm4rec.tuning` (hyperopt in-process, Ray Tune in its workers).
"""

import shutil
import sys
import tempfile
import time
from contextlib import contextmanager

import recbole_mmm4rec  # NumPy 2 fixes before RecBole is imported
from recbole.trainer import Trainer

from recbole_mmm4rec.tuning_space import plain


def run_trial(model, dataset, fixed, params, report=None):
    """Train and evaluate one set of params with ``recbole_mmm4rec.run``; returns the trial's record.

    ``report(epoch, best_valid_score, best_valid_result)`` is called after every validation. The
    checkpoint goes to a temporary folder (removed afterwards: best.yaml reproduces it), so trials
    running side by side never share a file.
    """
    checkpoint_dir = tempfile.mkdtemp(prefix="recbole-trial-")
    start = time.perf_counter()
    try:
        with no_command_line(), _reporting_validations(report):
            result = recbole_mmm4rec.run(model, dataset,
                                         config_dict={**fixed, **params, "checkpoint_dir": checkpoint_dir})
    finally:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return {
        "params": plain(params),
        "status": "finished",
        "epochs": result["epochs"],
        "best_valid_score": float(result["best_valid_score"]),
        "valid": {k: float(v) for k, v in result["best_valid_result"].items()},
        "test": {k: float(v) for k, v in result["test_result"].items()},
        "seconds": round(time.perf_counter() - start, 1),
    }


@contextmanager
def no_command_line():
    """RecBole's Config reads ``--key=value`` from sys.argv and lets it override everything: hide the
    sweep's own flags (and a Ray worker's) while a trial builds its config."""
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        yield
    finally:
        sys.argv = argv


_RECBOLE_VALID_EPOCH = Trainer._valid_epoch


@contextmanager
def _reporting_validations(report):
    """Call ``report`` after each validation of RecBole's ``Trainer`` (every subclass calls it)."""
    if report is None:
        yield
        return
    best = {}

    def _valid_epoch(trainer, valid_data, show_progress=False):
        score, result = _RECBOLE_VALID_EPOCH(trainer, valid_data, show_progress)
        if not best or (score > best["score"] if trainer.valid_metric_bigger else score < best["score"]):
            best.update(score=float(score), result={k: float(v) for k, v in result.items()})
        report(len(trainer.train_loss_dict), best["score"], best["result"])
        return score, result

    Trainer._valid_epoch = _valid_epoch
    try:
        yield
    finally:
        Trainer._valid_epoch = _RECBOLE_VALID_EPOCH


def failed(params, error):
    return {"params": plain(params), "status": "failed", "error": f"{type(error).__name__}: {error}"}
