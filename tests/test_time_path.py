"""MMM4Rec's time path learns, at the default initialisation and config (``time_path: live``), on the bundled
office data (real timestamps); the paper-literal form (``time_path: paper``) is pinned as the one that does not.

Every model here is built as users get it: no weights rescaled, no part switched on by hand.
"""

import pytest
import torch

import recbole_mmm4rec
from recbole_mmm4rec.models import MMM4Rec
from recbole_mmm4rec.trainers import nadam, parameter_groups

TIME_PARTS = ("time_step.scale", "time_step.conv", "time_gate", "time_norm", "fourier")
STEPS = 40


def office_model(office, seed=0, **overrides):
    config = recbole_mmm4rec.build_config("MMM4Rec", "office", config_dict={**_base(office), **overrides})
    torch.manual_seed(seed)
    return MMM4Rec(config, office[1]), config


def _base(office):
    config = office[0]
    return {key: config[key] for key in ("hidden_size", "inner_size", "expand", "head_dim", "n_groups", "d_state",
                                         "chunk_size", "train_batch_size", "show_progress", "state", "seed",
                                         "checkpoint_dir")}


@pytest.fixture(scope="module")
def batches(office):
    """A fixed sequence of real training batches (the same for every model compared)."""
    torch.manual_seed(0)
    return [batch for _, batch in zip(range(STEPS), office[2])]


def _rms(tensors):
    tensors = [t.flatten() for t in tensors if t is not None]
    return torch.cat(tensors).pow(2).mean().sqrt().item()


def _grads(model, part):
    return [p.grad for name, p in model.named_parameters() if part in name]


def _one_backward(model, batch):
    model.train()
    model.zero_grad()
    model.calculate_loss(batch).backward()


def _dt_rows(model):
    """Gradient of the content side of dt: the dt rows of every TiSSD in_proj / TiCoSSD u_proj."""
    rows = []
    for layer in model.encoder.layers:
        for proj, heads in ((layer.tissd.in_proj, layer.tissd.n_heads), (layer.ticossd.u_proj, layer.ticossd.n_heads)):
            rows.append(proj.weight.grad[-heads:])
    return rows


@pytest.mark.parametrize("time_path", ["live", "paper"])
def test_one_backward_reaches_the_time_path(office, batches, time_path):
    """The time path acts on the SSD through dt only: its gradient is compared with that of dt's content
    projection (in_proj's dt rows). Default: within two orders of magnitude; the paper's N(0, 0.02) with
    tanhshrink: more than five orders below (tanhshrink(v) ~ v^3 / 3 at v ~ 4e-3)."""
    model, _ = office_model(office, time_path=time_path)
    _one_backward(model, batches[0])
    dt = _rms(_dt_rows(model))
    assert dt > 0
    for part in TIME_PARTS:
        ratio = _rms(_grads(model, part)) / dt
        if time_path == "live":
            assert ratio > 1e-2, f"{part}: gradient {ratio:.1e} of dt's"
        elif part in ("time_step.scale", "time_gate", "fourier"):
            assert ratio < 1e-5, f"{part}: gradient {ratio:.1e} of dt's"


def _train(model, batches, freeze_time_path=False):
    """What NAdamTrainer does with the default learner (NAdam, lr 1e-3, weight decay 0.005, the time path's
    parameters exempt under ``live``), over the fixed batches. With ``freeze_time_path`` the time path's loss
    gradients are zeroed before each step: only weight decay moves it."""
    optimizer = nadam(parameter_groups(model.parameters()), learning_rate=1e-3, weight_decay=0.005)
    model.train()
    torch.manual_seed(1)  # the same dropout masks for the runs compared
    for batch in batches:
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        if freeze_time_path:
            for name, param in model.named_parameters():
                if any(part in name for part in TIME_PARTS) and param.grad is not None:
                    param.grad.zero_()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained(office, batches):
    """time_path -> (trained model, its twin trained with the time path's loss gradients zeroed, start weights)."""
    result = {}
    for time_path in ("live", "paper"):
        start = office_model(office, time_path=time_path)[0].state_dict()
        runs = []
        for freeze in (False, True):
            model = office_model(office, time_path=time_path)[0]
            runs.append(_train(model, batches, freeze_time_path=freeze))
        result[time_path] = (*runs, start)
    return result


def _norm(tensors):
    return torch.cat([t.flatten() for t in tensors]).norm().item()


def test_training_moves_the_time_path_beyond_weight_decay(trained):
    """After a short training on office, each time-path part differs from its twin (same batches, same dropout,
    its loss gradients zeroed: moved by weight decay alone) by a visible fraction of its size. (Under
    ``paper`` the loss gradients are ~1e-12 and weight decay drives the weights to zero, where NAdam's
    steps of size lr make the twins' tiny differences chaotic: that case is pinned by the gradient test.)"""
    model, decay_only, start = trained["live"]
    params, twin = dict(model.named_parameters()), dict(decay_only.named_parameters())
    for part in TIME_PARTS:
        names = [name for name in params if part in name]
        beyond = _norm([params[n].detach() - twin[n].detach() for n in names]) / _norm([start[n] for n in names])
        print(f"{part}: moved {beyond:.1e} of its size beyond weight decay")
        assert beyond > 1e-3, f"{part}: moved {beyond:.1e} beyond weight decay"


def test_the_time_normalisation_learns_per_position(trained):
    """The shipped checkpoint's time LayerNorm weights were all equal (only weight decay had moved them)."""
    live, paper = trained["live"][0], trained["paper"][0]
    assert live.encoder.time_norm.weight.std() > 1e-4
    assert paper.encoder.time_norm.weight.std() < 1e-6


def test_trained_scores_depend_on_the_timestamps(trained, office):
    """The same histories with their time gaps shuffled get other scores from the trained default model:
    the user vectors move (measured: ~6e-4 of their norm after 40 steps of this tiny model) and some users'
    top-10 lists change."""
    model = trained["live"][0]
    batch = next(iter(office[4]))[0][:256]
    times, length = batch["timestamp_list"], batch["item_length"]
    real_positions = torch.arange(times.shape[1]) < length.unsqueeze(1)
    gaps = torch.diff(times, dim=1, prepend=times[:, :1])
    generator = torch.Generator().manual_seed(0)
    shuffled = torch.stack([torch.cat([g[:n][torch.randperm(int(n), generator=generator)], g[n:]])
                            for g, n in zip(gaps, length)])
    other = torch.cumsum(shuffled, 1) * real_positions
    assert not torch.equal(other, times)
    with torch.no_grad():
        real = model.forward(batch["item_id_list"], length, times)
        moved = model.forward(batch["item_id_list"], length, other)
        items = model.encoder.item_embeddings(model.encoder.adapted_items(model.items))
        top_real = model.encoder.scores(real, items).topk(10).indices
        top_moved = model.encoder.scores(moved, items).topk(10).indices
    assert ((real - moved).norm(dim=1) / real.norm(dim=1)).mean() > 1e-4
    assert (top_real != top_moved).any(dim=1).sum() >= 1
