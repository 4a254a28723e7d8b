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

from recbole_mmm4rec import distributed
from recbole_mmm4rec.quick_start import distributed_trainer

WORKER = Path(__file__).with_name("distributed_worker.py")


def launch(mode, model, out, processes=2, timeout=300):
    """Run the worker (under torchrun with ``processes`` ranks, or plain for 1); returns (result, process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
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


@pytest.mark.parametrize("model", ["MMM4Rec", "SASRec"])
def test_a_step_of_two_ranks_is_the_step_of_one_process_on_the_whole_batch(tmp_path, model):
    result, process = launch("step", model, tmp_path / "step.json")
    succeeded(process)
    assert result["world_size"] == 2 and result["rows"] == 64
    assert result["parameters_moved"] == result["parameters"]  # the step did something to every weight
    assert result["largest_move"] > 1e-5
    assert result["max_difference"] < 1e-12  # float64: the all-reduced mean gradient is the whole batch's


def test_distributed_evaluation_equals_one_process_exactly(tmp_path):
    result, process = launch("eval", "MMM4Rec", tmp_path / "eval.json")
    succeeded(process)
    assert result["users"] == 4905 and result["batches"] == 8  # office: 4 batches a rank, 2800 vs 2105 users
    assert result["distributed"] == result["single"]  # 12 decimals, every metric


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
