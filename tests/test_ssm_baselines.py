"""Mamba4Rec and TiM4Rec (ID-based SSM baselines on the shared SSD block) on the bundled scientific_mm data:
training, scoring consistency, padding, time awareness, config errors and one CLI run."""

import os
import subprocess
import sys

import pytest
import torch

import recbole_mmm4rec
from conftest import fit_steps
from recbole_mmm4rec.layers.tissd import TiSSD
from recbole_mmm4rec.quick_start import PROJECT_ROOT

MODELS = ["Mamba4Rec", "TiM4Rec"]
SSM_TINY = {
    "hidden_size": 16,
    "inner_size": 32,
    "num_layers": 2,
    "head_dim": 8,
    "d_state": 8,
    "chunk_size": 8,
    "dropout_prob": 0.0,
    "show_progress": False,
    "state": "WARNING",
}


def ssm_config(model, tiny_dict=None, **overrides):
    base = {**SSM_TINY, "checkpoint_dir": (tiny_dict or {}).get("checkpoint_dir", "saved/")}
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


def _wake_time_path(model):
    """The time path starts nearly silent (N(0, 0.02) weights): give it the scale training gives it."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(part in name for part in ("time_step", "time_gate", "in_proj")):
                param.normal_(0, 0.5)
    return model


def _with(batch, **fields):
    batch = batch[torch.arange(len(batch))]  # a copy
    for key, value in fields.items():
        batch[key] = value
    return batch


@pytest.mark.parametrize("model_name", MODELS)
def test_trains_and_scores_consistently(scientific, test_batch, model_name):
    dataset = scientific[1]
    model = build(model_name, dataset)
    assert all(isinstance(layer.ssm, TiSSD) for layer in model.layers)  # the one shared SSD block
    assert hasattr(model.layers[0].ssm, "time_step") == (model_name == "TiM4Rec")
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
    dataset = scientific[1]
    model = _wake_time_path(build(model_name, dataset))
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
        assert torch.allclose(model.full_sort_predict(dirty), model.full_sort_predict(clean), atol=1e-5)


def test_only_tim4rec_reads_timestamps(scientific, test_batch):
    dataset = scientific[1]
    first = _with(test_batch, timestamp_list=_real_timestamps(test_batch, 0))
    second = _with(test_batch, timestamp_list=_real_timestamps(test_batch, 1))
    with torch.no_grad():
        tim4rec = _wake_time_path(build("TiM4Rec", dataset))
        assert (tim4rec.full_sort_predict(first) - tim4rec.full_sort_predict(second)).abs().max() > 1e-3
        mamba4rec = _wake_time_path(build("Mamba4Rec", dataset))
        assert torch.equal(mamba4rec.full_sort_predict(first), mamba4rec.full_sort_predict(second))


@pytest.mark.parametrize(
    "model_name, override, message",
    [
        ("Mamba4Rec", {"head_dim": 12}, "head_dim"),
        ("TiM4Rec", {"n_groups": 3}, "n_groups"),
        ("Mamba4Rec", {"ssd_mode": "fast"}, "ssd_mode"),
        ("TiM4Rec", {"dropout_prob": 1.5}, "dropout_prob"),
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
         "--inner_size=32", "--head_dim=8", "--d_state=8"],
        capture_output=True, text=True, timeout=300, cwd=os.getcwd(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "test result" in log and "ndcg@10" in log
    assert any(name.startswith("Mamba4Rec-") for name in os.listdir(tmp_path))
