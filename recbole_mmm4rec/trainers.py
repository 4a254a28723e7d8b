"""Trainers of the plugin models: RecBole's trainer with NAdam, and multi-domain pre-training (MMM4Rec, UniSRec)."""

import os
from logging import getLogger
from time import perf_counter

import torch
from recbole.trainer import Trainer
from recbole.utils import set_color
from tqdm import tqdm

from recbole_mmm4rec import distributed
from recbole_mmm4rec.checkpoints import CheckpointError, expecting, read_checkpoint
from recbole_mmm4rec.compat import save_atomically
from recbole_mmm4rec.health import HealthMonitor
from recbole_mmm4rec.history import EpochHistory
from recbole_mmm4rec.layers.config import require_positive_int


def flush_denormals():
    """Compute subnormal floats (|x| < 1.2e-38 in float32) as zero on the CPU, where arithmetic on them is
    many times slower (an FFN's forward and backward 5.7x: benchmarks/subnormal_weights.py). Coupled L2
    weight decay under NAdam drives a weight whose data gradient is weaker than ``weight_decay * w``
    geometrically to zero, into that range (README "A transfer study from one spec file"): a pre-training
    epoch on CPU went from 509 s to 1,394 s as they accumulated. The setting is per thread and torch's
    intra-op threads inherit it when they start (at the first parallel op), so importing recbole_mmm4rec
    calls this; threads started before keep theirs. No effect on CUDA."""
    torch.set_flush_denormal(True)


def nadam(parameters, learning_rate, weight_decay):
    """``learner: nadam`` (MMM4Rec's optimiser, DESIGN.md §4): torch's NAdam with coupled L2 weight decay."""
    return torch.optim.NAdam(parameters, lr=learning_rate, weight_decay=weight_decay)


def parameter_groups(parameters):
    """Optimiser parameter groups: the parameters marked ``exempt_from_weight_decay`` (MMM4Rec's time path
    under ``time_path: live``, ``layers.time.init_time_path``) get weight decay 0, the rest the learner's.
    Returns a list of groups, or the parameters unchanged when none is marked."""
    parameters = list(parameters)
    exempt = [p for p in parameters if getattr(p, "exempt_from_weight_decay", False)]
    if not exempt:
        return parameters
    rest = [p for p in parameters if not getattr(p, "exempt_from_weight_decay", False)]
    return [{"params": rest}, {"params": exempt, "weight_decay": 0.0}]


def check_accumulation_steps(config):
    require_positive_int(config, config["model"], "accumulation_steps")
    return config["accumulation_steps"]


class PluginTrainer(Trainer):
    """RecBole's ``Trainer`` that also knows ``learner: nadam``, exempts marked parameters from weight decay
    (``parameter_groups``) and accumulates gradients over ``accumulation_steps`` batches.

    Accumulation as the MMM4Rec authors (AUTHORS_CODE_NOTES.md §2.2): the losses of ``accumulation_steps``
    batches are summed, not averaged (their gradients add up), and the optimiser steps after every
    ``accumulation_steps`` batches and after the last batch of the epoch. With k steps of batch b, one
    optimiser step sees k times the gradient of one batch of b * k rows; NAdam is invariant to that scale
    except for its eps and the coupled L2 term, which is then k times weaker relative to the loss.
    Single process, float32: RecBole's DDP, AMP and gradient scaler options are not supported here.
    With ``log_health`` every epoch logs each component's gradient norm and relative weight change
    (``recbole_mmm4rec.health``), also to TensorBoard under ``health/`` when ``log_tensorboard`` is on.
    """

    def __init__(self, config, model, train=True):
        super().__init__(config, model)
        self.accumulation_steps = check_accumulation_steps(config)
        self.health = HealthMonitor(model) if config["log_health"] else None
        if config["enable_amp"] or config["enable_scaler"] or not config["single_spec"]:
            raise ValueError(f"{type(self).__name__}: enable_amp, enable_scaler and RecBole's own multi-process "
                             "training (nproc > 1) are not supported by this trainer; for several processes "
                             "start run_recbole.py with torchrun (README \"Several processes\")")
        self.ddp = None  # several ranks: the DDP module of the training loss (none for an evaluator: train=False)
        if distributed.active() and train:
            self.ddp = distributed.wrap(distributed.TrainingLoss(model), self.device)
            self.saved_model_file = distributed.broadcast(self.saved_model_file)  # its name holds rank 0's time

    def _build_optimizer(self, **kwargs):
        kwargs["params"] = parameter_groups(kwargs.get("params", self.model.parameters()))
        if kwargs.get("learner", self.learner).lower() != "nadam":
            return super()._build_optimizer(**kwargs)
        return nadam(
            kwargs["params"],
            kwargs.get("learning_rate", self.learning_rate),
            kwargs.get("weight_decay", self.weight_decay),
        )

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        """One epoch; returns the sum of the batch losses (RecBole's convention)."""
        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        batches = tqdm(train_data, total=len(train_data), ncols=100, disable=not show_progress,
                       desc=set_color(f"Train {epoch_idx:>5}", "pink"))
        total = 0.0
        if self.health:
            self.health.start_epoch(self.model)
        self.optimizer.zero_grad()
        for index, interaction in enumerate(batches):
            last_of_step = (index + 1) % self.accumulation_steps == 0 or index + 1 == len(train_data)
            with distributed.no_sync(self.ddp, last_of_step):  # several ranks: all-reduce once per step
                loss = self._batch_loss(interaction, loss_func)
                self._check_nan(loss)
                loss.backward()  # summed into .grad across the accumulated batches
            total += loss.item()
            if last_of_step:
                self._optimizer_step()
        if self.health:
            self.health.end_epoch(self.model, epoch_idx, self.logger, self.tensorboard)
        return distributed.all_sum(total, self.device) / distributed.world_size() if self.ddp else total

    def _batch_loss(self, interaction, loss_func):
        """The loss of a batch; over several ranks, of this rank's rows, weighted (``distributed.sharded``)."""
        if not self.ddp:
            return loss_func(interaction.to(self.device))
        with distributed.sharded(interaction) as (share, weight):
            return self.ddp(share.to(self.device)) * weight

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's checkpoint, written by rank 0 only; the other ranks wait until it is there."""
        if distributed.is_main():
            super()._save_checkpoint(epoch, verbose=verbose, **kwargs)
        distributed.barrier()

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """RecBole's evaluation; over several ranks, ``distributed.evaluate`` (exact: one process's metrics)."""
        if not distributed.active() or not eval_data:
            return super().evaluate(eval_data, load_best_model, model_file, show_progress)
        if load_best_model:  # as RecBole's evaluate: the file rank 0 saved (every rank waited for it)
            with expecting(self.config["model"]):  # the checkpoint's Config may name this model (compat.py)
                checkpoint = torch.load(model_file or self.saved_model_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
        return distributed.evaluate(self, eval_data, show_progress)

    def _optimizer_step(self):
        if self.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
        if self.health:
            self.health.after_backward(self.model)
        self.optimizer.step()
        self.optimizer.zero_grad()


class NAdamTrainer(EpochHistory, PluginTrainer):
    """The trainer of every recbole-mmm4rec model: ``PluginTrainer`` with a per-epoch ``history``
    (training seconds, training loss, validation result; ``recbole_mmm4rec.history``)."""


class Pretrainer:
    """Pre-training on several domains at once (DESIGN.md §3, §6).

    ``views`` maps each domain to a model of that domain. A pre-trainable model (MMM4Rec, UniSRec) has
    ``encoder``, the module of every domain-independent weight (what transfers); ``items``, the module of
    one domain's item tables (features, item ID / item-modality embeddings); ``feature_dims``
    ({modality: dimension}); ``calculate_in_batch_loss(interaction)``, its pre-training loss on a batch of
    one domain; and the class attribute ``ENCODER_KEYS``, the config keys the encoder's weights depend on.
    All views share ONE encoder and each keeps its own item tables.
    Every batch comes from one domain (the domains' batches are interleaved at random) and is trained
    with the model's in-batch loss by the optimiser of ``learner``. After each epoch the views are
    evaluated on their domains' validation splits (full ranking); the mean ``valid_metric`` selects the
    best epoch. ``last.pth`` (everything needed to resume) is written atomically after every epoch and
    ``best.pth`` whenever the validation improves. Epoch e's shuffling is seeded with ``seed + e`` and its
    dropout with ``seed + e * N + rank`` (N processes; ``seed + e`` for one), so a resumed run gives the
    same result as an uninterrupted one.

    Under torchrun every rank builds the same batches and trains its share of each (``distributed.sharded``:
    the same domain on every rank in a step); the in-batch losses gather every rank's keys, so a step of N
    ranks is one process's step on the whole batch (without dropout). Checkpoints are written by rank 0.
    """

    def __init__(self, config, views, train_sets, valid_loaders, run_dir):
        self.config, self.views, self.train_sets, self.valid_loaders = config, views, train_sets, valid_loaders
        self.run_dir = run_dir
        self.logger = getLogger()
        self.device = config["device"]
        self.model = torch.nn.ModuleDict(views).to(self.device)  # shared encoder counted once
        self.evaluators = {d: NAdamTrainer(config, view, train=False) for d, view in views.items()}
        # RecBole's optimiser of `learner` (or NAdam), over every view's parameters
        self.optimizer = next(iter(self.evaluators.values()))._build_optimizer(params=self.model.parameters())
        self.accumulation_steps = check_accumulation_steps(config)
        self.health = HealthMonitor(self.model) if config["log_health"] else None
        self.epoch, self.history, self.best_score = 0, [], float("-inf")
        self.ddp = distributed.wrap(PretrainingLoss(self.model), self.device) if distributed.active() else None
        os.makedirs(run_dir, exist_ok=True)

    @property
    def encoder(self):
        return self._first.encoder

    @property
    def _first(self):
        return next(iter(self.views.values()))

    def fit(self, epochs, resume=False, show_progress=True):
        if resume:
            self.resume(os.path.join(self.run_dir, "last.pth"))
        while self.epoch < epochs:
            start = perf_counter()
            loss = self._train_epoch(self.epoch, show_progress)
            seconds = perf_counter() - start
            valid = self._validate(show_progress)
            score = sum(valid.values()) / len(valid)
            self.history.append({"epoch": self.epoch, "loss": loss, "seconds": seconds, "valid": valid})
            self.epoch += 1
            self.logger.info(
                set_color(f"pretrain epoch {self.epoch - 1}", "green")
                + f" [time: {seconds:.2f}s, in-batch loss: {loss:.4f}, valid {self.config['valid_metric']}: "
                + ", ".join(f"{d} {v:.4f}" for d, v in valid.items()) + "]"
            )
            if score > self.best_score:
                self.best_score = score
                self._save(os.path.join(self.run_dir, "best.pth"), with_optimizer=False)
            self._save(os.path.join(self.run_dir, "last.pth"), with_optimizer=True)
        return self.history

    def _batches(self, epoch):
        """This epoch's (domain, row indices) batches: shuffled inside each domain, interleaved at random."""
        generator = torch.Generator().manual_seed(self.config["seed"] + epoch)
        size = self.config["train_batch_size"]
        batches = []
        for domain in sorted(self.train_sets):
            order = torch.randperm(len(self.train_sets[domain]), generator=generator)
            batches += [(domain, order[i:i + size]) for i in range(0, len(order), size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=generator)]

    def _train_epoch(self, epoch, show_progress):
        """One epoch; the losses of ``accumulation_steps`` batches are summed before each optimiser step
        (as ``NAdamTrainer``). Returns the mean batch loss."""
        ranks = distributed.world_size()  # dropout: reproducible per epoch (hence resumable), apart per rank
        torch.manual_seed(self.config["seed"] + epoch * ranks + distributed.rank())
        self.model.train()
        total, batches = 0.0, self._batches(epoch)
        if self.health:
            self.health.start_epoch(self.model)
        self.optimizer.zero_grad()
        for index, (domain, rows) in enumerate(
                tqdm(batches, desc=f"Pretrain {epoch:>3}", ncols=100, disable=not show_progress)):
            last_of_step = (index + 1) % self.accumulation_steps == 0 or index + 1 == len(batches)
            with distributed.no_sync(self.ddp, last_of_step):  # several ranks: all-reduce once per step
                loss = self._batch_loss(domain, self.train_sets[domain][rows])
                if torch.isnan(loss):
                    raise ValueError(f"pre-training loss is NaN at epoch {epoch} (domain {domain})")
                loss.backward()
            total += loss.item()
            if last_of_step:
                if self.health:
                    self.health.after_backward(self.model)
                self.optimizer.step()
                self.optimizer.zero_grad()
        if self.health:
            self.health.end_epoch(self.model, epoch, self.logger)
        if self.ddp:  # the ranks' weighted share losses sum to N times the batch losses
            total = distributed.all_sum(total, self.device) / distributed.world_size()
        return total / len(batches)

    def _batch_loss(self, domain, interaction):
        """The in-batch loss of a batch of ``domain``; over several ranks, of this rank's share, weighted."""
        if not self.ddp:
            return self.views[domain].calculate_in_batch_loss(interaction.to(self.device))
        with distributed.sharded(interaction) as (share, weight):
            return self.ddp(domain, share.to(self.device)) * weight

    @torch.no_grad()
    def _validate(self, show_progress):
        metric = self.config["valid_metric"].lower()
        return {
            d: float(self.evaluators[d].evaluate(loader, load_best_model=False, show_progress=show_progress)[metric])
            for d, loader in self.valid_loaders.items()
        }

    def _state(self, with_optimizer):
        state = {
            "model": type(self._first).__name__,
            "encoder": self.encoder.state_dict(),
            "item_tables": {d: view.items.state_dict() for d, view in self.views.items()},
            "model_config": {key: self.config[key] for key in self._first.ENCODER_KEYS},
            "feature_dims": self._first.feature_dims,
            "datasets": sorted(self.views),
            "epoch": self.epoch,
            "history": self.history,
            "best_score": self.best_score,
        }
        if with_optimizer:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def _save(self, path, with_optimizer):
        """Written atomically by rank 0; the other ranks wait until it is there."""
        if distributed.is_main():
            save_atomically(self._state(with_optimizer), path)
        distributed.barrier()

    def resume(self, path):
        """Continue from ``last.pth``: weights, item tables, optimizer, epoch and history."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: no pre-training checkpoint at {path}")
        this = self._state(False)
        try:
            state = read_checkpoint(path, expect_model=this["model"], map_location=self.device).state
        except CheckpointError as error:
            raise ValueError(f"--resume: {error}") from None
        if [state.get("model", "MMM4Rec"), state["datasets"], state["model_config"]] != [
                this["model"], this["datasets"], this["model_config"]]:
            raise ValueError(
                f"--resume: {path} is a {state.get('model', 'MMM4Rec')} pre-trained on {state['datasets']} with "
                f"{state['model_config']}; this run is a {this['model']} on {this['datasets']} with "
                f"{this['model_config']}"
            )
        self.encoder.load_state_dict(state["encoder"])
        for domain, view in self.views.items():
            view.items.load_state_dict(state["item_tables"][domain])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.history, self.best_score = state["epoch"], state["history"], state["best_score"]
        self.logger.info(set_color("Resuming pre-training", "blue") + f" after epoch {self.epoch - 1} from {path}")


class PretrainingLoss(torch.nn.Module):
    """``views[domain].calculate_in_batch_loss(interaction)`` as a module: what ``Pretrainer`` wraps in
    DistributedDataParallel (the views share one encoder; another domain's item tables get no gradient)."""

    def __init__(self, views):
        super().__init__()
        self.views = views  # torch.nn.ModuleDict

    def forward(self, domain, interaction):
        return self.views[domain].calculate_in_batch_loss(interaction)
