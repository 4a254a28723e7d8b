"""Several processes under torchrun (recbole_mmm4rec.distributed): 2 ranks on CPU (gloo) on 127.0.0.1.

Each test starts ``tests/distributed_worker.py`` with ``python -m torch.distributed.run`` (torchrun) and reads
what rank 0 measured; the single-process reference is computed in the same process by rank 0 where the
comparison must be exact (same threads, same kernels), or by a plain run of the worker.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import split_scientific_mm

from recbole_mmm4rec import distributed
from recbole_mmm4rec.benchmark import cells
from recbole_mmm4rec.benchmark.__main__ import main as benchmark_main
from recbole_mmm4rec.quick_start import distributed_trainer

WORKER = Path(__file__).with_name("distributed_worker.py")


def launch(mode, model, out, processes=2, timeout=300, **env):
    """Run the worker (under torchrun with ``processes`` ranks, or plain for 1) with ``env`` added to its
    environment; returns (result, process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, str(WORKER), mode, model, str(out)]
    if processes > 1:
        command[1:2] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                        "--monitor_interval=0.5", str(WORKER)]
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    result = json.loads(Path(out).read_text()) if Path(out).is_file() else None
    return result, process


def succeeded(process):
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]


# CI runs our trainer (MMM4Rec) and RecBole's (SASRec); the other models are `slow` (make test-all): 1.5 min
@pytest.mark.parametrize("model", ["MMM4Rec", "SASRec", *(
    pytest.param(m, marks=pytest.mark.slow) for m in ("Mamba4Rec", "TiM4Rec", "TAME", "TextSASRec", "UniSRec",
                                                      "GRU4Rec"))])
def test_a_step_of_two_ranks_is_the_step_of_one_process_on_the_whole_batch(tmp_path, model):
    result, process = launch("step", model, tmp_path / "step.json")
    succeeded(process)
    assert result["world_size"] == 2 and result["rows"] == 64
    assert result["ranks_agree"]  # lock-step: every rank holds the same weights after the step
    # the step moved (nearly) every weight; TAME's left are still by design in a first step on scientific_mm
    # (no item lacks a feature; 1-token images: attention weight 1; gate of identical experts: zero gradient)
    assert result["parameters_moved"] >= result["parameters"] - (7 if model == "TAME" else 0)
    assert result["largest_move"] > 1e-5
    if model != "UniSRec":  # its MoE gate noise is drawn per share: the same step only in distribution
        # float64: the all-reduced mean gradient is the whole batch's up to the order of summation; the optimiser's
        # first step (g / (|g| + eps)) magnifies that round-off for gradients near eps (TAME once measured 1.6e-12),
        # while a gradient that was not all-reduced moves a weight by up to the learning rate
        assert result["max_difference"] < 1e-10


def test_distributed_evaluation_equals_one_process_exactly(tmp_path):
    result, process = launch("eval", "MMM4Rec", tmp_path / "eval.json")
    succeeded(process)
    assert result["users"] == 4905 and result["batches"] == 8  # office: 4 batches a rank, 2800 vs 2105 users
    assert result["distributed"] == result["single"]  # 12 decimals, every metric


@pytest.mark.slow  # 30 s; the step test above pins down each step
def test_a_short_training_run_follows_the_single_process_curve(tmp_path):
    two, process = launch("run", "SASRec", tmp_path / "two.json")
    succeeded(process)
    one, process = launch("run", "SASRec", tmp_path / "one.json", processes=1)
    succeeded(process)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert len(one["valid"]) == len(two["valid"]) == 2
    for single, several in zip(one["valid"] + [one["test"]], two["valid"] + [two["test"]]):
        assert single.keys() == several.keys()
        for metric in single:
            assert several[metric] == pytest.approx(single[metric], abs=1e-6), metric
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)  # the logged loss is the global batch's


def test_a_pretraining_step_of_two_ranks_is_one_process_step_on_the_whole_batch(tmp_path):
    """MMM4Rec (UniSRec's gate noise and item dropout are drawn per share, so its step is not one process's)."""
    result, process = launch("pretrain-step", "MMM4Rec", tmp_path / "step.json")
    succeeded(process)
    assert result["world_size"] == 2 and result["rows"] == 255  # shares of 128 and 127 rows
    assert result["repeated_targets"] > 0  # masked as negatives across the two shares too
    assert result["parameters_moved"] > 0
    assert result["max_difference"] < 1e-10  # the negatives of every row are the whole batch's (round-off as above)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """Two small real domains: disjoint halves of 800 scientific_mm users (as tests/test_pretrain.py)."""
    return split_scientific_mm(tmp_path_factory.mktemp("domains"), ("sci_a", "sci_b"), 400)


def test_distributed_pretraining_killed_and_resumed_equals_an_uninterrupted_run(tmp_path, domains):
    whole, process = launch("pretrain", "MMM4Rec", tmp_path / "whole.json", DOMAINS=domains)
    succeeded(process)
    assert whole["world_size"] == 2 and len(whole["loss"]) == 2 and whole["loss"][1] < whole["loss"][0]
    assert sorted(os.listdir(whole["run_dir"])) == ["best.pth", "last.pth"]
    _, process = launch("pretrain-killed", "MMM4Rec", tmp_path / "resumed.json", DOMAINS=domains)
    assert process.returncode != 0 and not (tmp_path / "resumed.json").exists()
    killed = tmp_path / "resumed.json.saved" / Path(whole["run_dir"]).name / "last.pth"
    assert torch.load(killed)["epoch"] == 1  # killed after epoch 0's checkpoint
    resumed, process = launch("pretrain-resume", "MMM4Rec", tmp_path / "resumed.json", DOMAINS=domains)
    succeeded(process)
    assert resumed["loss"] == whole["loss"]  # epoch 0 from last.pth's history, epoch 1 trained again
    states = [torch.load(Path(run["run_dir"]) / "last.pth") for run in (whole, resumed)]
    assert states[0]["epoch"] == states[1]["epoch"] == 2
    for part in ("encoder", "optimizer"):
        assert torch.equal(*(torch.cat([v.flatten().double() for v in flat(state[part])]) for state in states))


def flat(state):
    """Every tensor of a (nested) state dict, in key order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in flat(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in flat(item)]
    return []


def test_a_benchmark_cell_under_torchrun_is_trained_by_every_rank_and_written_by_rank_0(tmp_path):
    spec = tmp_path / "bench.yaml"
    spec.write_text(yaml.safe_dump({"models": ["SASRec"], "seeds": [2020],
                                    "datasets": {"scientific_mm": {"epochs": 1, "stopping_step": 0}},
                                    "model_config": {"SASRec": {"config": {"hidden_size": 16, "inner_size": 16,
                                                                           "n_layers": 1, "n_heads": 1}}}}))
    out = tmp_path / "results"
    process = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
         "recbole_mmm4rec.benchmark", str(spec), "--out", str(out), "--cell", "SASRec", "scientific_mm", "2020"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    succeeded(process)
    cell = json.loads(cells.cell_file(out, "SASRec", "scientific_mm", 2020).read_text())
    assert cell["status"] == "ok" and cell["environment"]["processes"] == 2 and cell["epochs_run"] == 1
    assert process.stdout.count("cell SASRec on scientific_mm, seed 2020: done") == 2  # each rank reports


def test_the_benchmark_runner_is_refused_under_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    spec = tmp_path / "bench.yaml"
    spec.write_text(yaml.safe_dump({"models": ["Pop"], "seeds": [2020], "datasets": {"scientific_mm": {"epochs": 1, "stopping_step": 0}}}))
    with pytest.raises(SystemExit):
        benchmark_main([str(spec), "--out", str(tmp_path)])
    assert "under torchrun, train one cell: --cell MODEL DATASET SEED" in capsys.readouterr().err
    assert not (tmp_path / "cells").exists()


def test_a_failing_rank_ends_the_whole_run_with_its_error(tmp_path):
    start = time.monotonic()
    _, process = launch("fail", "MMM4Rec", tmp_path / "fail.json", timeout=240)
    assert process.returncode != 0
    assert "rank 1 fails on purpose" in process.stdout + process.stderr
    assert time.monotonic() - start < 180  # rank 0 was waiting in a collective: torchrun stopped it


def test_recboles_own_multi_process_options_are_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="nproc / world_size are RecBole's own"):
        distributed.setup({"nproc": 2, "world_size": -1})


def test_a_recbole_trainer_that_cannot_shard_is_refused():
    from recbole.trainer import KGTrainer, Trainer

    from recbole_mmm4rec.trainers import NAdamTrainer

    assert distributed_trainer(Trainer, "SASRec") is NAdamTrainer
    assert distributed_trainer(NAdamTrainer, "MMM4Rec") is NAdamTrainer
    with pytest.raises(ValueError, match="KGAT trains with RecBole's KGTrainer"):
        distributed_trainer(KGTrainer, "KGAT")


def test_one_process_is_not_distributed():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()


def test_gathered_rows_are_put_back_in_single_process_batch_order():
    import torch

    # 5 batches over 2 ranks: rank 0 scored batches 0, 2, 4 (2, 1, 3 rows), rank 1 batches 1, 3 (2, 2 rows)
    rank0 = ([{"rec.topk": 2}, {"rec.topk": 1}, {"rec.topk": 3}], {"rec.topk": torch.tensor([0, 1, 4, 7, 8, 9])})
    rank1 = ([{"rec.topk": 2}, {"rec.topk": 2}], {"rec.topk": torch.tensor([2, 3, 5, 6])})
    merged = distributed._in_batch_order([rank0, rank1], "rec.topk", 5)
    assert merged.tolist() == list(range(10))
