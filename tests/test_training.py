"""Training end to end on the bundled data: the loss falls, MMM4Rec beats popularity, checkpoints round-trip,
and the CLI runs MMM4Rec and RecBole's built-ins side by side."""

import os
import subprocess
import sys

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed

import recbole_mmm4rec
from conftest import make_config
from recbole_mmm4rec.quick_start import PROJECT_ROOT


@pytest.fixture(scope="module")
def trained(tiny_dict):
    """A tiny MMM4Rec trained for 3 epochs of 114 steps (batch 96), best checkpoint saved."""
    config = make_config(tiny_dict, train_batch_size=96, epochs=3, learning_rate=0.003)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model("MMM4Rec")(config, train.dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "MMM4Rec")(config, model)
    trainer.fit(train, valid, saved=True, show_progress=False)
    test_result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    return config, trainer, test, test_result, len(train)


def test_a_few_hundred_steps_lower_the_loss(trained):
    _, trainer, _, _, steps_per_epoch = trained
    losses = trainer.train_loss_dict  # epoch -> summed batch losses
    assert len(losses) * steps_per_epoch >= 300
    assert losses[2] < losses[1] < losses[0]


def test_beats_most_popular_on_the_same_split(trained, tiny_dict):
    _, _, _, mmm4rec, _ = trained
    pop = recbole_mmm4rec.run("Pop", "scientific_mm", config_dict={**tiny_dict, "epochs": 1}, saved=False)
    assert mmm4rec["ndcg@10"] > 2 * pop["test_result"]["ndcg@10"]
    assert mmm4rec["recall@50"] > pop["test_result"]["recall@50"]


def test_checkpoint_loads_back_with_identical_scores(trained):
    from recbole.quick_start import load_data_and_model

    _, trainer, test, _, _ = trained
    batch = next(iter(test))[0]
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model.full_sort_predict(batch)
    # RecBole's own loader (torch's weights_only default), resolving --model=MMM4Rec by name
    _, loaded, _, _, _, _ = load_data_and_model(trainer.saved_model_file)
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded.full_sort_predict(batch), expected)
    assert torch.load(trainer.saved_model_file)["config"]["model"] == "MMM4Rec"


def _cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "run_recbole.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=os.getcwd(),
    )


TINY_FLAGS = ["--hidden_size=32", "--inner_size=32", "--head_dim=16", "--n_groups=2", "--d_state=8"]


@pytest.mark.parametrize("model", ["MMM4Rec", "SASRec"])
def test_cli_runs_our_model_and_recbole_builtins(model, tmp_path):
    flags = TINY_FLAGS if model == "MMM4Rec" else ["--hidden_size=16", "--inner_size=16", "--n_layers=1"]
    done = _cli(f"--model={model}", "--dataset=scientific_mm", "--epochs=1", "--show_progress=False",
                f"--checkpoint_dir={tmp_path}", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "test result" in log and "ndcg@10" in log and "recall@50" in log
    assert any(name.startswith(f"{model}-") for name in os.listdir(tmp_path))


def test_cli_unknown_model_fails_clearly(tmp_path):
    done = _cli("--model=NoSuchModel", f"--checkpoint_dir={tmp_path}", timeout=120)
    assert done.returncode != 0
    assert "NoSuchModel" in done.stderr


def test_accumulated_steps_equal_one_step_of_the_summed_batch(scientific, tiny_dict):
    """accumulation_steps = k over k batches of b rows is one optimiser step on the k summed losses: the same
    weights as one step on one batch of b * k rows with its (mean) loss multiplied by k (float64, no dropout,
    NAdam with coupled weight decay, as the authors)."""
    from recbole_mmm4rec.models import MMM4Rec
    from recbole_mmm4rec.trainers import NAdamTrainer

    k, b = 4, 32
    rows = next(iter(scientific[2]))[: k * b]
    no_dropout = {"embedding_dropout_prob": 0.0, "hidden_dropout_prob": 0.0, "time_dropout_prob": 0.0}
    config = make_config(tiny_dict, accumulation_steps=k, learning_rate=0.01, **no_dropout)

    def fresh():
        torch.manual_seed(0)
        return MMM4Rec(config, scientific[1]).double()

    accumulated = NAdamTrainer(config, fresh())
    accumulated._train_epoch([rows[i * b:(i + 1) * b] for i in range(k)], epoch_idx=0)

    whole = NAdamTrainer(config, fresh())
    whole.model.train()
    whole.optimizer.zero_grad()
    (k * whole.model.calculate_loss(rows)).backward()
    whole.optimizer.step()

    for (name, a), (_, w) in zip(accumulated.model.named_parameters(), whole.model.named_parameters()):
        assert torch.allclose(a, w, atol=1e-12, rtol=1e-10), name
    assert not torch.equal(dict(accumulated.model.named_parameters())["encoder.adapters.text.linear.weight"],
                           dict(fresh().named_parameters())["encoder.adapters.text.linear.weight"])


def test_accumulation_steps_must_be_a_positive_integer(scientific, tiny_dict):
    from recbole_mmm4rec.models import MMM4Rec
    from recbole_mmm4rec.trainers import NAdamTrainer

    with pytest.raises(ValueError, match="accumulation_steps must be a positive integer, got 0"):
        make_config(tiny_dict, accumulation_steps=0)  # refused when the config is read
    config = make_config(tiny_dict)
    config["accumulation_steps"] = 0  # and by the trainer, for a config changed afterwards
    with pytest.raises(ValueError, match="accumulation_steps must be a positive integer, got 0"):
        NAdamTrainer(config, MMM4Rec(config, scientific[1]))


@pytest.mark.parametrize("package", ["recbole_mmm4rec", None])
def test_importing_the_package_computes_subnormal_floats_as_zero_on_every_thread(package):
    """Weights that coupled L2 decay drove to ~1e-40 made a CPU pre-training epoch 2.7x slower."""
    code = (f"import {package}\n" if package else "") + (
        "import torch\ntorch.set_num_threads(2)\n"
        "y = torch.full((1 << 20,), 1e-40) * 1.0  # split over 2 threads\n"
        "print(int((y == 0).sum()), y.numel())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    zeros, total = map(int, out[-2:])
    assert zeros == (total if package else 0)
