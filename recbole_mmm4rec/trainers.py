"""Trainers of the plugin models."""

import torch
from recbole.trainer import Trainer


class NAdamTrainer(Trainer):
    """RecBole's ``Trainer`` that also knows ``learner: nadam`` (MMM4Rec's optimiser, DESIGN.md §4).

    torch's NAdam with coupled L2 ``weight_decay``, as the authors used it.
    """

    def _build_optimizer(self, **kwargs):
        if kwargs.get("learner", self.learner).lower() != "nadam":
            return super()._build_optimizer(**kwargs)
        return torch.optim.NAdam(
            kwargs.get("params", self.model.parameters()),
            lr=kwargs.get("learning_rate", self.learning_rate),
            weight_decay=kwargs.get("weight_decay", self.weight_decay),
        )
