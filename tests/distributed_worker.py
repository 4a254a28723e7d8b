"""One rank of the multi-process tests (tests/test_distributed.py starts two with torchrun, gloo on CPU).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_worker.py MODE MODEL OUT

Modes (rank 0 writes what it measured to OUT as JSON):
- ``step``: one optimiser step of the trainer on a global batch (each rank its half) vs one process's step
  on the whole batch, computed by rank 0 on a copy of the initial weights; float64, no dropout; and
  whether every rank holds the same weights after it.
- ``eval``: the trainer's distributed full-sort evaluation vs RecBole's single-process ``Trainer.evaluate``
  of the same weights on rank 0, with batches and users that do not divide by the number of ranks.
- ``run``: ``recbole_mmm4rec.run`` for two epochs without dropout (also run as one plain process).
- ``fail``: rank 1 raises while rank 0 waits in a collective.
- ``pretrain-step``: one pre-training step (in-batch loss, keys gathered from both ranks) vs one process's
  step on the whole batch of 255 rows (shares of 128 and 127 rows), float64, no dropout.
- ``pretrain``: ``recbole_mmm4rec.pretrain`` on the two domains in ``$DOMAINS`` for two epochs;
  ``pretrain-killed`` the same run, every rank killed (SIGKILL) once epoch 0's ``last.pth`` is written;
  ``pretrain-resume`` continues it with ``resume=True``.
"""

import json
import os
import signal
import sys

import torch
from conftest import TINY as TESTS_TINY  # this script's folder is on sys.path: tests/conftest.py
from conftest import prepare
from recbole.trainer import Trainer
from recbole.utils import get_model

import recbole_mmm4rec
from recbole_mmm4rec import distributed
from recbole_mmm4rec.trainers import NAdamTrainer, Pretrainer

TINY = {**TESTS_TINY, "num_layers": 1, "n_layers": 1, "n_heads": 2, "ddp_timeout": 60, "log_health": False,
        "train_batch_size": 64, "eval_batch_size": 700}
NO_DROPOUT = {key: 0.0 for key in ("embedding_dropout_prob", "hidden_dropout_prob", "time_dropout_prob",
                                   "attn_dropout_prob", "dropout_prob", "adaptor_dropout_prob",
                                   "retriever_dropout_prob", "item_drop_ratio")}


def setup(model_name, checkpoint_dir, dataset="scientific_mm", **overrides):
    config, _, train, _, test = prepare(recbole_mmm4rec.build_config(
        model_name, dataset, config_dict={**TINY, "checkpoint_dir": checkpoint_dir, **overrides}))

    def build():  # the same initial weights each call (a deepcopy would lose the weight-decay exemption marks)
        torch.manual_seed(0)
        return get_model(model_name)(config, train._dataset)

    return config, build, train, test


def step(model_name, checkpoint_dir):
    config, build, train, _ = setup(model_name, checkpoint_dir, **NO_DROPOUT)
    model, reference, start = build().double(), build().double(), build().double()
    trainer = NAdamTrainer(config, model)
    batch = next(iter(train))
    trainer._train_epoch([batch], 0)
    every_rank = [None] * distributed.world_size()
    torch.distributed.all_gather_object(every_rank, [p.detach().clone() for p in model.parameters()])
    if not distributed.is_main():
        return None
    ranks_agree = all(torch.equal(p, q) for other in every_rank[1:] for p, q in zip(every_rank[0], other))
    optimizer = trainer._build_optimizer(params=reference.parameters())
    loss = reference.calculate_loss(batch)
    (sum(loss) if isinstance(loss, tuple) else loss).backward()
    optimizer.step()
    moved = [float((p - q).abs().max().detach()) for p, q in zip(model.parameters(), reference.parameters())]
    stepped = [float((p - q).abs().max().detach()) for p, q in zip(reference.parameters(), start.parameters())]
    return {"rows": len(batch), "max_difference": max(moved), "parameters": len(moved), "ranks_agree": ranks_agree,
            "parameters_moved": sum(s > 0 for s in stepped), "largest_move": max(stepped)}


def evaluate(model_name, checkpoint_dir):
    config, build, _, test = setup(model_name, checkpoint_dir, "office", metric_decimal_place=12)
    trainer = NAdamTrainer(config, build())
    result = dict(trainer.evaluate(test, load_best_model=False))
    if not distributed.is_main():
        return None
    single = dict(Trainer.evaluate(trainer, test, load_best_model=False))
    return {"distributed": result, "single": single, "users": test.sample_size, "batches": len(test)}


def run(model_name, checkpoint_dir):
    """run_recbole's flow for two epochs without dropout: the validation curve and the test result."""
    result = recbole_mmm4rec.run(model_name, "scientific_mm", config_dict={
        **TINY, **NO_DROPOUT, "checkpoint_dir": checkpoint_dir, "epochs": 2, "metric_decimal_place": 12})
    if not distributed.is_main():
        return None
    return {"valid": [epoch["valid"] for epoch in result["history"]], "loss": [e["loss"] for e in result["history"]],
            "test": dict(result["test_result"])}


def pretrain_step(model_name, checkpoint_dir):
    config, build, train, _ = setup(model_name, checkpoint_dir, train_batch_size=255, **NO_DROPOUT)
    model, reference, start = build().double(), build().double(), build().double()
    rows = train._dataset.inter_feat
    trainer = Pretrainer(config, {"sci": model}, {"sci": rows}, {}, checkpoint_dir)
    batch = trainer._batches(0)[0]
    trainer._batches = lambda epoch: [batch]  # one step
    trainer._train_epoch(0, show_progress=False)
    if not distributed.is_main():
        return None
    optimizer = trainer.evaluators["sci"]._build_optimizer(params=reference.parameters())
    targets = rows[batch[1]][model.POS_ITEM_ID]
    reference.calculate_in_batch_loss(rows[batch[1]]).backward()
    optimizer.step()
    moved = [float((p - q).abs().max().detach()) for p, q in zip(model.parameters(), reference.parameters())]
    stepped = [float((p - q).abs().max().detach()) for p, q in zip(reference.parameters(), start.parameters())]
    return {"rows": len(batch[1]), "repeated_targets": len(targets) - len(targets.unique()),
            "max_difference": max(moved), "parameters_moved": sum(s > 0 for s in stepped)}


def pretrain(model_name, checkpoint_dir, resume=False):
    history, run_dir = recbole_mmm4rec.pretrain(["sci_a", "sci_b"], model=model_name, resume=resume, config_dict={
        **TINY, "data_path": os.environ["DOMAINS"], "checkpoint_dir": checkpoint_dir, "epochs": 2,
        "train_batch_size": 128, "feature_dims": {"text": 512, "image": 512}, "learning_rate": 0.003})
    return {"loss": [h["loss"] for h in history], "run_dir": run_dir} if distributed.is_main() else None


def pretrain_killed(model_name, checkpoint_dir):
    save = Pretrainer._save

    def save_then_die(self, path, with_optimizer):
        save(self, path, with_optimizer)
        if path.endswith("last.pth") and self.epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    Pretrainer._save = save_then_die
    return pretrain(model_name, checkpoint_dir)


def fail(model_name, checkpoint_dir):
    setup(model_name, checkpoint_dir)
    if distributed.rank() == 1:
        raise ValueError("rank 1 fails on purpose")
    distributed.barrier()  # rank 1 never gets here
    return None


if __name__ == "__main__":
    mode, model_name, out = sys.argv[1:4]
    found = {"step": step, "eval": evaluate, "run": run, "fail": fail, "pretrain-step": pretrain_step,
             "pretrain": pretrain, "pretrain-killed": pretrain_killed,
             "pretrain-resume": lambda name, folder: pretrain(name, folder, resume=True)}[mode](model_name, out + ".saved")
    if found is not None:
        found["world_size"] = distributed.world_size()
        with open(out, "w", encoding="utf-8") as f:
            json.dump(found, f)
