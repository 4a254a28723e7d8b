"""Training health (recbole_mmm4rec/health/): component labels, the per-epoch monitor and the checkpoint command."""

import logging
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import recbole_mmm4rec
from conftest import build_model
from recbole_mmm4rec import health
from recbole_mmm4rec.health import __main__ as command
from recbole_mmm4rec.quick_start import PROJECT_ROOT

SHIPPED = PROJECT_ROOT / "pretrained" / "mmm4rec-d64-scientific.pth"
MMM4REC_LABELS = {"adapters", "input_norms", "time_scale_mlp", "time_conv", "time_gate", "time_norm", "tissd",
                  "fourier", "ticossd", "ffn", "layer_norms", "item_tables"}


@pytest.fixture(scope="module")
def model(scientific):
    """A tiny real MMM4Rec on the bundled data (time path on, with item-modality bias)."""
    config, dataset = scientific[:2]
    return build_model(config, dataset)


@pytest.fixture(scope="module")
def train_batch(scientific):
    return next(iter(scientific[2]))


def test_every_mmm4rec_parameter_gets_a_named_component(model):
    labels = {name: health.component(name) for name, _ in model.named_parameters()}
    assert set(labels.values()) == MMM4REC_LABELS  # nothing falls back to "encoder" or "items"
    expected = {
        "encoder.adapters.text.linear.weight": "adapters",
        "encoder.input_norms.image.weight": "input_norms",
        "encoder.time_norm.weight": "time_norm",
        "encoder.layers.0.tissd.time_step.scale.1.weight": "time_scale_mlp",
        "encoder.layers.0.ticossd.time_step.scale.3.bias": "time_scale_mlp",
        "encoder.layers.0.tissd.time_step.conv1.conv.weight": "time_conv",
        "encoder.layers.0.tissd.time_gate.gate.1.weight": "time_gate",
        "encoder.layers.0.tissd.time_gate.norm.weight": "time_norm",
        "encoder.layers.0.tissd.in_proj.weight": "tissd",
        "encoder.layers.0.tissd.mixer.norm.weight": "tissd",
        "encoder.layers.0.fourier.fuse.real.weight": "fourier",
        "encoder.layers.0.ticossd.q_proj.weight": "ticossd",
        "encoder.layers.0.text_ffn.net.0.weight": "ffn",
        "encoder.layers.0.fused_ffn.norm.weight": "ffn",
        "encoder.layers.0.fused_norm.weight": "layer_norms",
        "items.text.bias.weight": "item_tables",
    }
    assert {name: labels[name] for name in expected} == expected


@pytest.mark.parametrize("name, label", [
    ("layers.0.ssm.in_proj.weight", "ssm"),  # Mamba4Rec / TiM4Rec
    ("layers.1.ssm.time_step.scale.1.weight", "time_scale_mlp"),
    ("layers.0.ffn.net.0.weight", "ffn"),
    ("layers.0.norm.weight", "layer_norms"),
    ("embedding_norm.bias", "layer_norms"),
    ("item_embedding.weight", "item_tables"),
    ("item_embedding.adapter.linear.weight", "adapters"),  # TextSASRec
    ("encoder.adapter.experts.0.projection.weight", "adapters"),  # UniSRec
    ("encoder.adapter.gate", "adapters"),
    ("encoder.transformer.layer.0.multi_head_attention.query.weight", "attention"),
    ("trm_encoder.layer.1.feed_forward.LayerNorm.weight", "ffn"),  # RecBole's SASRec
    ("LayerNorm.weight", "layer_norms"),
    ("position_embedding.weight", "position_embedding"),
    ("sci_a.encoder.layers.0.fourier.fuse.imag.bias", "fourier"),  # a Pretrainer's ModuleDict of views
    ("gru_layers.weight_ih_l0", "gru_layers"),  # unknown: the first dotted part
])
def test_component_of_other_models(name, label):
    assert health.component(name) == label


def test_monitor_over_real_optimizer_steps(scientific, train_batch, tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    model = build_model(*scientific[:2]).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = health.HealthMonitor(model)
    for _ in range(3):
        optimizer.zero_grad()
        model.calculate_loss(train_batch).backward()
        monitor.after_backward(model)
        optimizer.step()
    writer = SummaryWriter(str(tmp_path))
    with caplog.at_level(logging.INFO):
        figures = monitor.end_epoch(model, 0, logging.getLogger("health-test"), writer)
    writer.close()

    assert set(figures) == MMM4REC_LABELS
    for label in ("adapters", "input_norms", "tissd", "ticossd", "ffn", "layer_norms", "item_tables"):
        assert figures[label]["steps"] == 3
        assert figures[label]["grad_norm_max"] >= figures[label]["grad_norm_mean"] > 0
        assert figures[label]["weight_change"] > 0
    assert figures["item_tables"]["absolute_change"]  # zero-initialised item-modality bias: absolute change
    assert not figures["adapters"]["absolute_change"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("health epoch 0:")]
    assert len(lines) == 1 and all(f"{label} " in lines[0] for label in MMM4REC_LABELS)

    events = list(tmp_path.glob("events.out.tfevents*"))
    assert events
    tags = EventAccumulator(str(events[0])).Reload().Tags()["scalars"]
    assert {"health/grad_norm/adapters", "health/weight_change/time_scale_mlp"} <= set(tags)


class Toy(nn.Module):
    """alive gets a unit gradient scale, dead one 1e-9 of it; table starts at zero."""

    def __init__(self):
        super().__init__()
        self.alive, self.dead = nn.Linear(4, 1), nn.Linear(4, 1)
        self.table = nn.Parameter(torch.zeros(3))

    def loss(self, x):
        return self.alive(x).sum() + 1e-9 * self.dead(x).sum() + self.table.sum()


def test_dead_component_is_marked_and_zero_start_is_absolute(caplog):
    torch.manual_seed(0)
    toy = Toy()
    before = health.snapshot(toy)
    monitor = health.HealthMonitor(toy)
    optimizer = torch.optim.SGD(toy.parameters(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        toy.loss(torch.ones(2, 4)).backward()
        assert health.dead_components(health.gradient_norms(toy)) == ["dead"]
        monitor.after_backward(toy)
        optimizer.step()
    with caplog.at_level(logging.INFO):
        figures = monitor.end_epoch(toy, 7, logging.getLogger("health-test"))
    assert [label for label, f in figures.items() if f["dead"]] == ["dead"]
    assert figures["table"]["weight_change"] == pytest.approx(torch.full((3,), 1.0).norm().item())  # 2 x 0.5 each
    assert health.relative_change(before, toy)["table"] == pytest.approx(3 ** 0.5)
    line = caplog.records[-1].getMessage()
    assert line.startswith("health epoch 7:") and "dead " in line and "DEAD" in line and "(abs)" in line


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "recbole_mmm4rec.health", *map(str, args)],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)


def _trained_on_office(office, time_path, path, steps=20):
    """A tiny MMM4Rec trained ``steps`` NAdam steps on office (what NAdamTrainer does), saved as RecBole does."""
    from recbole_mmm4rec.models import MMM4Rec
    from recbole_mmm4rec.trainers import nadam, parameter_groups

    config = recbole_mmm4rec.build_config("MMM4Rec", "office", config_dict={
        key: office[0][key] for key in ("hidden_size", "inner_size", "expand", "head_dim", "n_groups", "d_state",
                                        "chunk_size", "show_progress", "state", "seed", "checkpoint_dir")
    } | {"time_path": time_path, "train_batch_size": 128})
    torch.manual_seed(0)
    model = MMM4Rec(config, office[1]).train()
    optimizer = nadam(parameter_groups(model.parameters()), learning_rate=1e-3, weight_decay=0.005)
    for _, batch in zip(range(steps), office[2]):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    torch.save({"config": config, "epoch": 0, "state_dict": model.state_dict()}, path)
    return path


@pytest.mark.parametrize("time_path", ["paper", "live"])
def test_cli_shows_a_time_norm_that_data_never_reached(office, tmp_path, time_path):
    """Trained with the authors' time path, the time LayerNorm's weights move by weight decay alone and stay
    equal to one another (as in the checkpoint shipped before the fixes: all 0.58345): CONSTANT. With the
    default time path they learn per position."""
    out = run_cli(_trained_on_office(office, time_path, tmp_path / f"MMM4Rec-{time_path}.pth"))
    assert out.returncode == 0, out.stderr
    line = next(row for row in out.stdout.splitlines() if row.strip().startswith("encoder.time_norm.weight"))
    assert ("CONSTANT" in line) == (time_path == "paper"), line


def test_cli_against_itself_is_zero_change(capsys):
    assert command.main([str(SHIPPED), "--against", str(SHIPPED)]) == 0
    out = capsys.readouterr().out.split("||A-B||/||B||\n")[1]
    rows = [line.split() for line in out.splitlines()]
    assert {row[0] for row in rows} >= MMM4REC_LABELS
    assert all(float(row[2]) == 0.0 for row in rows)


def test_cli_on_a_recbole_model_file_builds_a_fresh_encoder(scientific, model, tmp_path, capsys):
    path = tmp_path / "MMM4Rec-test.pth"  # what RecBole's Trainer saves (less the optimizer)
    torch.save({"config": scientific[0], "epoch": 0, "state_dict": model.state_dict()}, path)
    assert command.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "RecBole model file of MMM4Rec" in out and "fresh initialisation: MMM4RecEncoder" in out


@pytest.mark.parametrize("content", ["missing", "text", "truncated", "tensor"])
def test_cli_bad_file_is_a_one_line_error(content, tmp_path):
    path = tmp_path / f"{content}.pth"
    if content == "text":
        path.write_text("not a checkpoint\n")
    elif content == "truncated":
        path.write_bytes(SHIPPED.read_bytes()[:5000])
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    result = run_cli(path) if content == "missing" else None
    if result is None:  # in-process: cheaper than a fresh interpreter per case
        import io
        from contextlib import redirect_stderr

        stderr = io.StringIO()
        with redirect_stderr(stderr):
            code = command.main([str(path)])
        result = subprocess.CompletedProcess([], code, "", stderr.getvalue())
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and lines[0].startswith("health: error:")


def test_tensor_flags_mark_entries_that_weight_decay_drove_to_zero():
    """The MMM4Rec encoder pre-trained for reports/transfer.yaml: most entries of its SSD projections ~1e-11
    while a few rows stayed large (std not SHRUNK). A tensor that started at zero is not flagged for it."""
    torch.manual_seed(0)
    fresh = torch.randn(128, 64) * 0.02
    trained = fresh.clone()
    trained[:80] *= 1e-12  # 62 % of the rows decayed away, the rest intact
    assert command.tensor_flags(trained, fresh) == ["ZEROED (62%)"]
    assert command.tensor_flags(fresh, fresh) == []
    started_at_zero = torch.zeros(128, 64)
    learned = started_at_zero.clone()
    learned[100:] = 0.05 * torch.randn(28, 64)  # a zero-initialised table where only a few rows learned
    assert command.tensor_flags(learned, started_at_zero) == []
