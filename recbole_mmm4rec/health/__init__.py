"""Training health: does every part of a model learn? Per-component gradient norms and weight changes.

A "component" is a group of parameters (adapters, TiSSD, the time-scale MLP, ...) named by ``component``
from an ordered table of rules (``RULES``). During training, ``HealthMonitor`` logs per epoch the mean and
max per-step gradient norm of each component and its relative weight change ||theta - theta0|| / ||theta0||,
and marks DEAD a component whose gradient norm is < 1e-6 x the largest one's. On a saved checkpoint,
``python -m recbole_mmm4rec.health CHECKPOINT [--against OTHER]`` prints per-component weight statistics,
flags tensors that data never moved, and compares with a fresh initialisation or another checkpoint.
"""

import math
import re
from collections import defaultdict
from functools import lru_cache
from logging import getLogger

import torch
import torch.nn as nn  # importing this module imports recbole_mmm4rec, whose compat lets RecBole files load

TINY = 1e-12  # ||theta0|| at or below this: the change is reported absolute, not relative
DEAD_RATIO = 1e-6  # gradient norm < DEAD_RATIO x the largest component's: DEAD
CONSTANT_TOL = 1e-6  # all entries within this of each other: CONSTANT (no data gradient reached the tensor)
SHRUNK_STD = 1e-3  # std below this: SHRUNK
ZEROED_ABS, ZEROED_SHARE = 1e-10, 0.5  # at least this share of the entries below this in size: ZEROED

# (regex searched in the parameter name, component): the first match wins; otherwise the first dotted part.
# Names may carry prefixes ("encoder.", a Pretrainer view's domain), so rules match dotted parts anywhere.
RULES = (
    (r"(^|\.)adapters?\.", "adapters"),  # MMM4Rec / TextSASRec ModalityAdapter, UniSRec's MoE adapter
    (r"(^|\.)input_norms\.", "input_norms"),
    (r"(^|\.)time_step\.scale\.", "time_scale_mlp"),  # s = act(W2 silu(W1 delta)), MMM4Rec eq. 3
    (r"(^|\.)time_step\.conv", "time_conv"),  # the depthwise causal convs of eq. 4
    (r"(^|\.)time_gate\.gate\.", "time_gate"),  # g = sigmoid(linear_L(delta))
    (r"(^|\.)(time_norm|time_gate\.norm)\.", "time_norm"),  # LN_L of the time signals
    (r"(^|\.)fourier\.", "fourier"),  # dual-channel Fourier filter, eqs. 12-15
    (r"(^|\.)tissd\.", "tissd"),  # after the time rules: TiSSD without its time_step / time_gate
    (r"(^|\.)ticossd\.", "ticossd"),  # TiCoSSD without its time_step
    (r"(^|\.)ssm\.", "ssm"),  # Mamba4Rec / TiM4Rec's state-space block (SSD or selective scan)
    (r"(^|\.)(text_ffn|fused_ffn|ffn|feed_forward)\.", "ffn"),  # FFNs with their own LayerNorm
    (r"(^|\.)multi_head_attention\.", "attention"),  # RecBole's Transformer (SASRec, UniSRec, ...)
    (r"(^|\.)items\.|item_embedding", "item_tables"),  # MMM4Rec ItemTable, ID embeddings
    (r"position_embedding", "position_embedding"),
    (r"(?i)norm", "layer_norms"),  # text/image/fused/embedding norms, LayerNorm, layer_norm
)
_COMPILED = tuple((re.compile(pattern), label) for pattern, label in RULES)


@lru_cache(maxsize=None)
def component(name):
    """The component label of a parameter name (first matching rule of ``RULES``, else its first dotted part)."""
    return next((label for pattern, label in _COMPILED if pattern.search(name)), name.split(".")[0])


def snapshot(model):
    """{name: detached copy} of every parameter: theta0 for ``relative_change``."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def gradient_norms(model):
    """{component: L2 norm of the gradients of all its parameters together}, after backward.
    Parameters without a gradient (``.grad is None``) are skipped; a component with none is absent."""
    labels, norms = [], []
    for name, p in model.named_parameters():
        if p.grad is not None:
            grad = p.grad.detach().coalesce().values() if p.grad.is_sparse else p.grad.detach()
            labels.append(component(name))
            norms.append(torch.linalg.vector_norm(grad.float()))
    squares = defaultdict(float)
    for label, norm in zip(labels, torch.stack(norms).tolist() if norms else []):  # one device sync
        squares[label] += norm ** 2
    return {label: math.sqrt(s) for label, s in sorted(squares.items())}


def _change_norms(before_state, named):
    """{component: (||theta - theta0||, ||theta0||)} over the (name, tensor) pairs that ``before_state`` holds."""
    diff, base = defaultdict(float), defaultdict(float)
    for name, value in named:
        if name in before_state:
            old, label = before_state[name].float(), component(name)
            diff[label] += float(torch.linalg.vector_norm(value.detach().float() - old)) ** 2
            base[label] += float(torch.linalg.vector_norm(old)) ** 2
    return {label: (math.sqrt(diff[label]), math.sqrt(base[label])) for label in sorted(diff)}


def _ratio(change, base):
    """||theta - theta0|| / ||theta0||; the absolute change where ||theta0|| <= TINY (e.g. zero-initialised tables)."""
    return change / base if base > TINY else change


def relative_change(before_state, model):
    """{component: ||theta - theta0|| / ||theta0||} with theta0 = ``before_state`` (``snapshot``) and theta the
    parameters of ``model`` (a module, or a {name: tensor} dict). Where ||theta0|| <= TINY (a zero-initialised
    item table, a zero bias) the value is the ABSOLUTE change ||theta - theta0||: a ratio would be meaningless."""
    named = model.named_parameters() if isinstance(model, nn.Module) else model.items()
    return {label: _ratio(*norms) for label, norms in _change_norms(before_state, named).items()}


def dead_components(grad_norms, ratio=DEAD_RATIO):
    """Sorted components whose gradient norm is <= ``ratio`` x the largest component's (all, if every one is 0)."""
    largest = max(grad_norms.values(), default=0.0)
    return sorted(label for label, norm in grad_norms.items() if norm <= ratio * largest)


class HealthMonitor:
    """Per-epoch training health of ``model``, for a trainer::

        monitor = HealthMonitor(model)               # snapshots theta0 (also: start_epoch(model))
        ... loss.backward(); monitor.after_backward(model); optimizer.step()   # every step
        figures = monitor.end_epoch(model, epoch, logger, self.tensorboard)  # logs; starts the next epoch

    Gradient figures are over the epoch's steps in which the component had a gradient (``steps``)."""

    def __init__(self, model, dead_ratio=DEAD_RATIO):
        self.dead_ratio = dead_ratio
        self.start_epoch(model)

    def start_epoch(self, model):
        """Snapshot the weights (theta0 of this epoch) and clear the gradient statistics."""
        self.before = snapshot(model)
        self.grad_sum, self.grad_max, self.steps = defaultdict(float), defaultdict(float), defaultdict(int)

    def after_backward(self, model):
        """Record this step's per-component gradient norms (call after backward, right before optimizer.step())."""
        for label, norm in gradient_norms(model).items():
            self.grad_sum[label] += norm
            self.grad_max[label] = max(self.grad_max[label], norm)
            self.steps[label] += 1

    def end_epoch(self, model, epoch, logger=None, tensorboard_writer=None):
        """Log one line, write the scalars ``health/grad_norm/<c>``, ``health/grad_norm_max/<c>`` and
        ``health/weight_change/<c>`` (step = epoch), return {component: figures}; then start the next epoch."""
        changes = _change_norms(self.before, model.named_parameters())
        means = {label: self.grad_sum[label] / self.steps[label] for label in self.steps}
        dead = set(dead_components(means, self.dead_ratio))
        figures = {
            label: {"grad_norm_mean": means.get(label), "grad_norm_max": self.grad_max.get(label),
                    "steps": self.steps.get(label, 0), "weight_change": _ratio(change, base),
                    "absolute_change": base <= TINY, "dead": label in dead}
            for label, (change, base) in changes.items()
        }
        (logger or getLogger()).info(format_health(epoch, figures, self.dead_ratio))
        if tensorboard_writer is not None:
            for label, f in figures.items():
                if f["grad_norm_mean"] is not None:
                    tensorboard_writer.add_scalar(f"health/grad_norm/{label}", f["grad_norm_mean"], epoch)
                    tensorboard_writer.add_scalar(f"health/grad_norm_max/{label}", f["grad_norm_max"], epoch)
                tensorboard_writer.add_scalar(f"health/weight_change/{label}", f["weight_change"], epoch)
        self.start_epoch(model)
        return figures


def format_health(epoch, figures, dead_ratio=DEAD_RATIO):
    """The log line of ``HealthMonitor.end_epoch``: "adapters 1.2e-01/3.4e-01 Δ 2.1e-03; ..."; (abs) marks an
    absolute change (theta0 = 0), DEAD a dead component, "no grad" one that got no gradient this epoch."""
    parts = []
    for label, f in sorted(figures.items()):
        grads = "no grad" if f["grad_norm_mean"] is None else f"{f['grad_norm_mean']:.1e}/{f['grad_norm_max']:.1e}"
        parts.append(f"{label} {grads} Δ {f['weight_change']:.1e}" + " (abs)" * f["absolute_change"]
                     + " DEAD" * f["dead"])
    dead = [label for label, f in sorted(figures.items()) if f["dead"]]
    return (f"health epoch {epoch}: grad-norm (mean/max per step) and relative weight change per component: "
            + "; ".join(parts) + (f" | DEAD (grad-norm < {dead_ratio:g} x largest): {', '.join(dead)}" if dead else ""))
