"""Per-epoch training history for any RecBole trainer (ours and RecBole's built-in ones).

``with_history(TrainerClass)`` returns the class with ``EpochHistory`` mixed in: ``trainer.history`` then
holds one entry per epoch, ``{"epoch", "train_seconds", "loss", "valid"}`` (``epoch`` is RecBole's
0-based epoch index; ``valid`` is the validation result of that epoch, present on evaluated epochs).
``run()`` wraps every trainer this way, so benchmarks and convergence reports read the same record for
SASRec as for MMM4Rec.
"""

from time import perf_counter


class EpochHistory:
    """Mixin for a RecBole ``Trainer``: records training seconds, loss and validation result per epoch."""

    def __init__(self, config, model, **kwargs):
        super().__init__(config, model, **kwargs)
        self.history = []

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        start = perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self.history.append({"epoch": epoch_idx, "train_seconds": perf_counter() - start,
                             "loss": float(sum(loss) if isinstance(loss, tuple) else loss)})
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress)
        if self.history:
            self.history[-1]["valid"] = {k: float(v) for k, v in result.items()}
        return score, result


def with_history(trainer_class):
    """``trainer_class`` with ``EpochHistory`` mixed in (unchanged if it already records history)."""
    if issubclass(trainer_class, EpochHistory):
        return trainer_class
    return type(trainer_class.__name__, (EpochHistory, trainer_class), {"__module__": __name__})
