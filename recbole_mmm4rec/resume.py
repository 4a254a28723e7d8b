"""Epoch-level resume of RecBole's ``Trainer.fit`` for any trainer (ours and RecBole's built-ins).

``run(..., resume_file=PATH)`` writes PATH atomically after every evaluated epoch: the model, the
optimiser, RecBole's early-stopping state (``cur_step``, best score and result, the best epoch's file),
the per-epoch history and every random state training draws from (torch, NumPy, Python, the training
loader's shuffling generator). A run started again with the same ``resume_file`` continues after that
epoch and gives the result of an uninterrupted run (tested: ``tests/test_resume.py``). A benchmark cell
killed at epoch 30 of a 40-epoch run therefore loses one epoch, not thirty.

A run that had already stopped early (or reached ``epochs``) is not trained again: it goes straight to
the test on its best epoch. One process only: under torchrun no resume file is written.
"""

import os
import random

import numpy as np
import torch

from recbole_mmm4rec.compat import save_atomically


def save_resume_point(path, trainer, train_data, epoch, fit_seconds):
    """Everything needed to continue ``trainer.fit`` after ``epoch`` (0-based), written atomically."""
    save_atomically({
        "epoch": epoch,
        "stopped": trainer.cur_step > trainer.stopping_step or epoch + 1 >= trainer.epochs,
        "cur_step": trainer.cur_step,
        "best_valid_score": trainer.best_valid_score,
        "best_valid_result": trainer.best_valid_result,
        "saved_model_file": trainer.saved_model_file,
        "state_dict": trainer.model.state_dict(),
        "other_parameter": trainer.model.other_parameter(),
        "optimizer": trainer.optimizer.state_dict(),
        "train_loss_dict": dict(trainer.train_loss_dict),
        "history": list(trainer.history),
        "fit_seconds": fit_seconds,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "loader": train_data.generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }, path)


def load_resume_point(path, trainer, train_data, logger):
    """Restore ``trainer`` (and the random states) from ``path``; returns the saved state, or None when
    there is no file (a fresh run). A file that cannot be read is an error naming it."""
    if not os.path.isfile(path):
        return None
    try:
        state = torch.load(path, map_location=trainer.device, weights_only=False)
        trainer.model.load_state_dict(state["state_dict"])
        trainer.optimizer.load_state_dict(state["optimizer"])
    except Exception as error:  # noqa: BLE001  a truncated or foreign file: say which one
        raise ValueError(f"resume_file {path} cannot be used ({type(error).__name__}: {error}); delete it to "
                         "start the run again") from None
    trainer.model.load_other_parameter(state["other_parameter"])
    trainer.start_epoch = state["epoch"] + 1
    trainer.cur_step, trainer.best_valid_score = state["cur_step"], state["best_valid_score"]
    trainer.best_valid_result = state["best_valid_result"]
    trainer.saved_model_file = state["saved_model_file"]
    trainer.train_loss_dict.update(state["train_loss_dict"])
    trainer.history[:] = state["history"]
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    train_data.generator.set_state(rng["loader"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    logger.info(f"resumed from {path}: epochs 0-{state['epoch']} done"
                + (" and training had stopped: testing its best epoch" if state["stopped"] else ""))
    return state
