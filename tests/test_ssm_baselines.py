"""Mamba4Rec (Mamba-1 block) and TiM4Rec (TiSSD block), the ID-based SSM baselines, on the bundled
scientific_mm data: training, scoring consistency, padding, time awareness, the authors' settings, config
errors and one CLI run. Every model is at its default initialisation."""

import os
import subprocess
import sys

import pytest
import torch

import recbole_mmm4rec
from conftest import fit_steps
from recbole_mmm4rec.layers.selective_scan import MambaBlock
from recbole_mmm4rec.layers.tissd import TiSSD
from recbole_mmm4rec.quick_start import PROJECT_ROOT

MODELS = ["Mamba4Rec", "TiM4Rec"]
BLOCKS = {"Mamba4Rec": MambaBlock, "TiM4Rec": TiSSD}
SSM_TINY = {
    "hidden_size": 16,
    "inner_size": 32,
    "num_layers": 2,
    "d_state": 8,
    "dropout_prob": 0.0,
    "show_progress": False,
    "state": "WARNING",
}
TINY_BLOCK = {"Mamba4Rec": {}, "TiM4Rec": {"head_dim": 8, "chunk_size": 8}}  # TiSSD's own keys


def ssm_config(model, tiny_dict=None, **overrides):
    base = {**SSM_TINY, **TINY_BLOCK[model], "checkpoint_dir": (tiny_dict or {}).get("checkpoint_dir", "saved/")}
    return recbole_mmm4rec.build_config(model, "scientific_mm", config_dict={**base, **overrides})


def build(model, dataset, seed=0, **overrides):
    """A model on the shared fixture's dataset (same items and fields as RecBole's SequentialDataset)."""
    from recbole.utils import get_model

    torch.manual_seed(seed)
    return get_model(model)(ssm_config(model, **overrides), dataset).eval()


def _padding(batch):
    return torch.arange(batch["item_id_list"].shape[1]) >= batch["item_length"].unsqueeze(1)  # [B, L]


def _real_timestamps(batch, gap_seed=0):
    """Irregular increasing timestamps on real positions (the bundled data only has ordinal time)."""
    g = torch.Generator().manual_seed(gap_seed)
    gaps = torch.randint(1, 10**6, batch["timestamp_list"].shape, generator=g).float()
    return torch.cumsum(gaps, 1) * (~_padding(batch))


def _with(batch, **fields):
    batch = batch[torch.arange(len(batch))]  # a copy
    for key, value in fields.items():
        batch[key] = value
    return batch


@pytest.mark.parametrize("model_name", MODELS)
def test_trains_and_scores_consistently(scientific, test_batch, model_name):
    dataset = scientific[1]
    model = build(model_name, dataset)
    assert all(type(layer.ssm) is BLOCKS[model_name] for layer in model.layers)
    batch = next(iter(scientific[2]))[: 64]  # one training batch, repeated
    losses = fit_steps(model, batch, steps=20, lr=0.01)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    small = test_batch[:16]
    with torch.no_grad():
        full = model.full_sort_predict(small)
        one = model.predict(small)
    assert full.shape == (16, dataset.item_num)
    assert torch.allclose(full.gather(1, small["item_id"].unsqueeze(1)).squeeze(1), one, atol=1e-5)


@pytest.mark.parametrize("model_name", MODELS)
def test_padded_positions_change_nothing(scientific, test_batch, model_name):
    """In float64 and to 1e-10: at the default initialisation the time path moves scores by ~1e-9 only (see
    test_only_tim4rec_reads_timestamps), so a leak through it would hide under a float32 tolerance."""
    dataset = scientific[1]
    model = build(model_name, dataset).double()
    pad = _padding(test_batch)
    assert pad.any(), "the batch must contain padded positions"
    timestamps = _real_timestamps(test_batch)
    g = torch.Generator().manual_seed(1)
    junk_items = torch.randint(1, dataset.item_num, pad.shape, generator=g)
    junk_times = torch.randint(0, 10**9, pad.shape, generator=g).float()
    clean = _with(test_batch, timestamp_list=timestamps)
    dirty = _with(test_batch, item_id_list=torch.where(pad, junk_items, test_batch["item_id_list"]),
                  timestamp_list=torch.where(pad, junk_times, timestamps))
    with torch.no_grad():
        torch.testing.assert_close(model.full_sort_predict(dirty), model.full_sort_predict(clean), rtol=0, atol=1e-10)


def test_only_tim4rec_reads_timestamps(scientific, test_batch):
    """Float64: at the authors' N(0, 0.02) initialisation TiM4Rec's time path is nearly silent. Measured
    (this size, seed 0): other timestamps move its scores (|s| up to 0.44) by at most 1.4e-9, below float32
    resolution; at the default 64-d size by 4.8e-8 of scores up to 1.5. The check is that the time signal
    reaches the scores at all, far above float64 rounding."""
    dataset = scientific[1]
    first = _with(test_batch, timestamp_list=_real_timestamps(test_batch, 0))
    second = _with(test_batch, timestamp_list=_real_timestamps(test_batch, 1))
    with torch.no_grad():
        tim4rec = build("TiM4Rec", dataset).double()
        assert (tim4rec.full_sort_predict(first) - tim4rec.full_sort_predict(second)).abs().max() > 1e-12
        mamba4rec = build("Mamba4Rec", dataset)
        assert torch.equal(mamba4rec.full_sort_predict(first), mamba4rec.full_sort_predict(second))


def test_tim4rec_runs_the_authors_settings(scientific):
    """Defaults as the authors' code: no Tanhshrink, dropout_prob on the raw time differences,
    time_dropout_prob (their time_drop_out, 0.0) inside the time path, a per-position time gate."""
    config = ssm_config("TiM4Rec")
    assert (config["time_scale_activation"], config["time_path"], config["p2p_residual"]) == ("none", "paper", True)
    model = build("TiM4Rec", scientific[1], dropout_prob=0.4)
    assert model.time_dropout.p == 0.4
    for layer in model.layers:
        scale = layer.ssm.time_step.scale
        assert isinstance(scale[-1], torch.nn.Identity) and scale[0].p == 0.0
    assert all(layer.ssm.time_gate.gate[0].p == 0.0 for layer in model.layers[:-1])
    assert model.layers[-1].ssm.time_gate is None  # its delta' would have no next layer: no dead weights


@pytest.mark.parametrize("p2p_residual, gates", [(True, 20), (False, 1)])
def test_p2p_residual_switches_the_gate_shape(scientific, test_batch, p2p_residual, gates):
    model = build("TiM4Rec", scientific[1], p2p_residual=p2p_residual)
    length = model.max_seq_length
    assert length == 20
    assert len(model.layers) == 2
    for layer in model.layers[:-1]:
        assert layer.ssm.time_gate.gate[1].weight.shape == (gates, length)
    delta = torch.randn(3, model.n_heads, length)
    assert model.layers[0].ssm.time_gate.gate(delta).shape == (3, model.n_heads, gates)
    with torch.no_grad():
        scores = model.full_sort_predict(_with(test_batch[:8], timestamp_list=_real_timestamps(test_batch[:8])))
    assert torch.isfinite(scores).all()


def test_tim4rec_time_path_learns_at_default_init(scientific):
    """At the authors' N(0, 0.02) initialisation the time-scale MLP gets a nonzero, finite gradient."""
    model = build("TiM4Rec", scientific[1]).train()
    batch = next(iter(scientific[2]))[:64]
    batch = _with(batch, timestamp_list=_real_timestamps(batch))
    model.calculate_loss(batch).backward()
    for i, layer in enumerate(model.layers):
        for name, param in layer.ssm.time_step.scale.named_parameters():
            assert torch.isfinite(param.grad).all(), (i, name)
            assert param.grad.abs().max() > 0, (i, name)


@pytest.mark.parametrize(
    "model_name, override, message",
    [
        ("Mamba4Rec", {"dt_rank": 0}, "dt_rank"),
        ("Mamba4Rec", {"dt_rank": "big"}, "dt_rank"),
        ("Mamba4Rec", {"d_state": 0}, "d_state"),
        ("TiM4Rec", {"head_dim": 12}, "head_dim"),
        ("TiM4Rec", {"n_groups": 3}, "n_groups"),
        ("TiM4Rec", {"ssd_mode": "fast"}, "ssd_mode"),
        ("TiM4Rec", {"dropout_prob": 1.5}, "dropout_prob"),
        ("TiM4Rec", {"time_dropout_prob": 1.0}, "time_dropout_prob"),
        ("TiM4Rec", {"time_scale_activation": "relu"}, "time_scale_activation"),
        ("TiM4Rec", {"time_path": "big"}, "time_path"),
        ("Mamba4Rec", {"time_aware": True}, "TiM4Rec"),
        ("TiM4Rec", {"time_aware": False}, "Mamba4Rec"),
    ],
)
def test_bad_config_values_name_the_key(scientific, model_name, override, message):
    with pytest.raises(ValueError, match=message):
        build(model_name, scientific[1], **override)


def test_cli_runs_mamba4rec(tmp_path):
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run_recbole.py"), "--model=Mamba4Rec", "--dataset=scientific_mm",
         "--epochs=1", "--show_progress=False", f"--checkpoint_dir={tmp_path}", "--hidden_size=16",
         "--inner_size=32", "--d_state=8", "--dt_rank=2"],
        capture_output=True, text=True, timeout=300, cwd=os.getcwd(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "test result" in log and "ndcg@10" in log
    assert any(name.startswith("Mamba4Rec-") for name in os.listdir(tmp_path))
