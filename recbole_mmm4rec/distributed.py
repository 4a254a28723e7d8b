"""Several processes under ``torchrun``: sharded batches, ``DistributedDataParallel``, exact evaluation.

``torchrun --nproc_per_node=N run_recbole.py ...`` starts N copies of the command; torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) says which one each is.
RecBole's own multi-process path (``nproc``, ``world_size``, ``ip``, ``port``) is not used: it spawns its
own processes, hard-codes NCCL and CUDA, pads every rank's evaluation with duplicated users and then
re-weights the per-rank metrics. Here instead:

* ``setup``: one process group per run (NCCL with one GPU per local rank on CUDA, gloo on CPU), a
  timeout on every collective (``ddp_timeout`` seconds), logging, progress bars and TensorBoard on rank 0
  only.
* Training: every rank builds the same global batch of ``train_batch_size`` rows (the same shuffling,
  seeded by ``seed``) and trains on its share, rows ``rank, rank + N, ...`` (``sharded``). The loss of a
  share is weighted by ``N * rows_of_rank / rows_of_batch``, so that DistributedDataParallel's mean of
  the ranks' gradients is the gradient of the whole batch's mean loss: a step of N ranks is the step of
  one process on the whole batch, and the default run follows one process's learning curve.
  ``train_batch_size`` is therefore global (each rank computes about ``train_batch_size / N`` rows).
  In-batch losses (pre-training, TAME's contrastive term: ``layers.in_batch``) gather every rank's keys
  (``gather_batch``), so their negatives are the whole batch's, as in one process. Pre-training trains
  the same domain's batch on every rank in each step (``trainers.Pretrainer``).
* Evaluation (``evaluate``): batch i is scored by rank ``i % N``; the per-user results are gathered and
  put back in single-process order before RecBole's evaluator computes the metrics, so that the metrics
  equal a single-process evaluation of the same weights exactly. No user is duplicated or re-weighted.
"""

import contextlib
import logging
import os
from datetime import timedelta

import torch
import recbole.trainer.trainer
import recbole.utils
import torch.distributed as dist
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.utils import EvaluatorType, set_color
from tqdm import tqdm

# the per-row tensors of RecBole's evaluation DataStruct (recbole/evaluator/collector.py)
PER_ROW_KEYS = ("rec.items", "rec.topk", "rec.meanrank", "rec.score", "data.label")


def launched():
    """True in a process that torchrun started with more than one process in all."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active():
    """True once ``setup`` has joined the process group of a multi-process run."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    """This process's rank: the process group's, or torchrun's ``RANK`` before ``setup`` joins it."""
    if active():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size():
    return dist.get_world_size() if active() else 1


def is_main():
    return rank() == 0


def visible_gpus():
    """The ``gpu_id`` that a torchrun process gives RecBole's Config: every GPU torchrun's environment shows
    (RecBole would otherwise set CUDA_VISIBLE_DEVICES to its default ``0`` and put all ranks on one GPU)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return os.environ["CUDA_VISIBLE_DEVICES"]
    return ",".join(str(i) for i in range(torch.cuda.device_count()))


def setup(config):
    """Join the run's process group and give this rank its device and output settings (torchrun only).

    Called by ``quick_start.build_config`` after RecBole's Config; a second call (pre-training builds one
    config per domain) reuses the group. On CUDA, local rank r uses GPU r of those visible.
    """
    global _gather_group
    if not launched():
        return
    if config["nproc"] not in (None, 1) or config["world_size"] not in (None, -1, 1):
        raise ValueError("nproc / world_size are RecBole's own multi-process options; under torchrun leave them "
                         "unset: torchrun --nproc_per_node=N sets the number of processes")
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = config["device"].type == "cuda"
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local_rank}: only {torch.cuda.device_count()} GPU(s) visible; "
                               "start at most one process per GPU (--nproc_per_node)")
        config["device"] = torch.device("cuda", local_rank)
        torch.cuda.set_device(config["device"])
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=config["ddp_timeout"]))
        _gather_group = dist.new_group()  # gather_batch's collectives run beside DDP's, in their own group
    if not is_main():
        config["state"], config["show_progress"] = "ERROR", False
        recbole.trainer.trainer.get_tensorboard = lambda logger: _NoTensorBoard()  # no folder, no events


class _NoTensorBoard:
    """What RecBole's ``Trainer`` gets as its TensorBoard writer on ranks other than 0: every call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def init_logger(config):
    """RecBole's logger (console and log file) on rank 0; the other ranks print errors only, write no file."""
    if is_main():
        recbole.utils.init_logger(config)
    else:
        logging.basicConfig(level=logging.ERROR)


def wrap(loss, device):
    """A module whose forward pass is a training loss (``TrainingLoss``, ``trainers.PretrainingLoss``) as
    a ``DistributedDataParallel`` module: DDP's gradient hooks fire for what goes through its forward.
    Rank 0's weights are broadcast to every rank here."""
    return torch.nn.parallel.DistributedDataParallel(
        loss, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,  # a model need not use every parameter in every step
    )


class TrainingLoss(torch.nn.Module):
    """``model.calculate_loss(interaction)`` as a module (RecBole's tuple of losses summed)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, interaction):
        loss = self.model.calculate_loss(interaction)
        return sum(loss) if isinstance(loss, tuple) else loss


_gather_group = None
_share = None  # (rows of the global batch, this rank's rows, the rows it trains) while a share is trained


@contextlib.contextmanager
def sharded(interaction):
    """``with sharded(batch) as (share, weight)``: this rank's rows of a global batch and the weight of
    their mean loss (module docstring). Inside, ``gather_batch`` and ``batch_positions`` know the layout.

    A rank left without rows (a last batch smaller than the number of ranks) trains on row 0 with
    weight 0, so that every rank takes part in every step."""
    global _share
    n, size = len(interaction), world_size()
    rows = torch.arange(rank(), n, size)
    trained = rows if len(rows) else torch.zeros(1, dtype=torch.long)
    _share = (n, rows, trained)
    try:
        yield interaction[trained], size * len(rows) / n
    finally:
        _share = None


def gather_batch(tensor):
    """Every rank's share of a per-row ``tensor`` [n_r, ...] put together: [N, ...] in the global batch's
    row order, with gradient (each rank gets the gradient of its own rows, summed over the ranks' losses).
    Outside a sharded step (one process, evaluation) the tensor itself."""
    if _share is None:
        return tensor
    n, rows, _ = _share
    size, longest = world_size(), -(-n // world_size())
    padded = torch.cat([tensor[:len(rows)], tensor.new_zeros((longest - len(rows), *tensor.shape[1:]))])
    every = _AllGather.apply(padded)  # [W, longest, ...]: rank r's i-th row is global row r + i * W
    return every.transpose(0, 1).reshape(longest * size, *tensor.shape[1:])[:n]


def batch_positions(count, device):
    """The global batch rows of this rank's ``count`` rows (0 .. count - 1 outside a sharded step)."""
    if _share is None:
        return torch.arange(count, device=device)
    return _share[2].to(device)


class _AllGather(torch.autograd.Function):
    """all_gather [n, ...] -> [W, n, ...] with its gradient: the sum over the ranks of the gradient of
    this rank's block (an all-reduce; gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, tensor):
        blocks = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(blocks, tensor.contiguous(), group=_gather_group)
        return torch.stack(blocks)

    @staticmethod
    def backward(ctx, gradient):
        gradient = gradient.contiguous()
        dist.all_reduce(gradient, group=_gather_group)
        return gradient[rank()]


def no_sync(ddp, last_of_step):
    """DDP's ``no_sync`` for the batches before the last one of an accumulated optimiser step (nothing
    when ``ddp`` is None: one process)."""
    return contextlib.nullcontext() if ddp is None or last_of_step else ddp.no_sync()


def all_sum(value, device):
    """The sum over the ranks of a float (a training loss for the log); NCCL reduces tensors on the GPU."""
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item()


def broadcast(value):
    """Rank 0's picklable ``value`` on every rank (e.g. the checkpoint file name, which holds a time)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier():
    if active():
        dist.barrier()


@torch.no_grad()
def evaluate(trainer, eval_data, show_progress=False):
    """RecBole's ``Trainer.evaluate`` loop (after the best model is loaded) over several ranks: exact.

    Every rank iterates all batches (so that a sampler's random numbers are drawn as in one process) and
    scores batch i when ``i % world_size == rank``; the rows that each batch added to the collector are
    gathered and concatenated in batch order, which is what one process collects."""
    trainer.model.eval()
    if isinstance(eval_data, FullSortEvalDataLoader):
        eval_func = trainer._full_sort_batch_eval
        if trainer.item_tensor is None:
            trainer.item_tensor = eval_data._dataset.get_item_feature().to(trainer.device)
    else:
        eval_func = trainer._neg_sample_batch_eval
    if trainer.config["eval_type"] == EvaluatorType.RANKING:
        trainer.tot_item_num = eval_data._dataset.item_num
    collector = trainer.eval_collector
    sizes = []  # per own batch: {key: rows it added}
    batches = tqdm(eval_data, total=len(eval_data), ncols=100, desc=set_color("Evaluate   ", "pink"),
                   disable=not show_progress)
    for index, batched_data in enumerate(batches):
        if index % world_size() != rank():
            continue
        before = _row_counts(collector.data_struct)
        interaction, scores, positive_u, positive_i = eval_func(batched_data)
        collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
        after = _row_counts(collector.data_struct)
        sizes.append({key: after[key] - before.get(key, 0) for key in after})
    collector.model_collect(trainer.model)
    struct = collector.get_data_struct()
    local = {key: struct[key].cpu() for key in PER_ROW_KEYS if key in struct}
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, (sizes, local))
    for key in {key for _, tensors in gathered for key in tensors}:  # a rank may have had no batch
        struct.set(key, _in_batch_order(gathered, key, len(eval_data)))
    return trainer.evaluator.evaluate(struct)


def _row_counts(struct):
    return {key: len(struct[key]) for key in PER_ROW_KEYS if key in struct}


def _in_batch_order(gathered, key, n_batches):
    """Rows of ``key`` from every rank's (sizes, tensors), put back in the order batch 0, 1, 2, ..."""
    pieces = []
    for sizes, tensors in gathered:
        splits = [s[key] for s in sizes]
        pieces.append(list(torch.split(tensors[key], splits)) if splits else [])
    size = len(gathered)
    return torch.cat([pieces[i % size][i // size] for i in range(n_batches)])
