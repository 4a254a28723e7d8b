"""Hyperparameter sweeps (recbole_mmm4rec/tuning.py, run_hyper.py): params files, hyperopt and Ray Tune
(locally and on a Ray head node started here), results, best config, resume."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray._private.utils import get_ray_address_file

import recbole_mmm4rec
from recbole_mmm4rec import tuning

ROOT = Path(__file__).resolve().parents[1]

# A tiny SASRec (RecBole's built-in): a trial takes seconds on 2 cores.
TINY_SASREC = {"epochs": 1, "hidden_size": 16, "inner_size": 16, "n_layers": 1, "n_heads": 1,
               "train_batch_size": 256, "show_progress": False, "state": "WARNING"}


def write(path, text):
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------------------------- params files
def test_params_file_in_recbole_format(tmp_path):
    space = tuning.read_params_file(write(tmp_path / "p.test", (
        "# comment\n"
        "learning_rate choice [0.001, 0.0005]\n"
        "\n"
        "hidden_dropout_prob uniform 0.1,0.5\n"
        "d_state quniform 16,64,16\n"
        "weight_decay loguniform -9,-4\n"
        "item_modality_bias choice [True,False]\n")))
    assert list(space) == ["learning_rate", "hidden_dropout_prob", "d_state", "weight_decay", "item_modality_bias"]
    assert space["learning_rate"].values == [0.001, 0.0005]
    assert space["d_state"].values == [16.0, 64.0, 16.0]

    drawn = tuning.draw(space, 5, seed=3)
    assert drawn == tuning.draw(space, 5, seed=3)  # a resumed sweep draws the same trials
    for params in drawn:
        assert isinstance(params["d_state"], int) and params["d_state"] in (16, 32, 48, 64)
        assert 0.1 <= params["hidden_dropout_prob"] <= 0.5
        assert 1.2e-4 <= params["weight_decay"] <= 1.9e-2
    with pytest.raises(ValueError, match=r"p.test:4: exhaustive search needs every parameter to be a choice"):
        tuning.grid(space)

    # the repository's search space for MMM4Rec is a grid over MMM4Rec's own keys
    hyper = tuning.read_params_file(str(ROOT / "hyper.test"))
    config = recbole_mmm4rec.build_config("MMM4Rec", "scientific_mm")
    assert all(name in config.final_config_dict for name in hyper)
    assert len(tuning.grid(hyper)) > 1


@pytest.mark.parametrize("line, message", [
    ("learning_rate choice", r"bad.test:2: expected 'name type values'"),
    ("learning_rate between 0,1", r"bad.test:2: unknown type 'between'"),
    ("learning_rate choice [0.1,", r"bad.test:2: choice needs a non-empty list"),
    ("learning_rate choice []", r"bad.test:2: choice needs a non-empty list"),
    ("learning_rate uniform 0.5,0.1", r"bad.test:2: uniform needs low,high with low < high"),
    ("learning_rate quniform 1,8", r"bad.test:2: quniform needs low,high,q"),
    ("d_state choice [16,32]", r"bad.test:2: 'd_state' is already defined at .*bad.test:1"),
])
def test_malformed_params_file_names_the_line(tmp_path, line, message):
    path = write(tmp_path / "bad.test", f"d_state choice [16]\n{line}\n")
    with pytest.raises(ValueError, match=message):
        tuning.read_params_file(path)


# ---------------------------------------------------------------------------------------- hyperopt
def test_hyperopt_sweep_resumes_and_its_best_config_reproduces(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # RecBole's log/ folders
    params_file = write(tmp_path / "lr.test", "learning_rate choice [0.001,0.003]\n")
    output = tmp_path / "hyper" / "sasrec.md"
    real_run_trial, calls = tuning.run_trial, []

    def interrupted_on_second_trial(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_trial(*args, **kwargs)

    monkeypatch.setattr(tuning, "run_trial", interrupted_on_second_trial)
    with pytest.raises(KeyboardInterrupt):
        tuning.sweep("SASRec", "scientific_mm", params_file, overrides=TINY_SASREC, output_file=output)
    journal = json.loads((tmp_path / "hyper" / "sasrec-trials.json").read_text())
    assert [t["params"] for t in journal["trials"]] == [{"learning_rate": 0.001}]

    def counted(*args, **kwargs):
        calls.append(args[3])
        return real_run_trial(*args, **kwargs)

    calls.clear()
    monkeypatch.setattr(tuning, "run_trial", counted)
    sweep = tuning.sweep("SASRec", "scientific_mm", params_file, overrides=TINY_SASREC, output_file=output)
    assert calls == [{"learning_rate": 0.003}]  # the finished trial is not trained again
    assert [t["status"] for t in sweep.trials.values()] == ["finished", "finished"]
    first = sweep.trials[tuning.key({"learning_rate": 0.001})]
    assert first == journal["trials"][0]

    rows = list(csv.DictReader(open(tmp_path / "hyper" / "sasrec.csv")))
    assert [r["learning_rate"] for r in rows] == ["0.001", "0.003"]
    assert {"valid ndcg@10", "test ndcg@10", "valid recall@50", "test hit@10"} <= set(rows[0])
    assert "| trial | learning_rate | status |" in output.read_text()

    best = sweep.best()
    assert sum("(best)" in r["status"] for r in rows) == 1
    best_yaml = tmp_path / "hyper" / "sasrec-best.yaml"
    settings = yaml.safe_load(best_yaml.read_text())
    assert settings == {**TINY_SASREC, **best["params"], "seed": 2020, "reproducibility": True}

    # run_recbole.py --model=SASRec --config_files=<best.yaml>: the same valid result, the same test result
    rerun = recbole_mmm4rec.run("SASRec", "scientific_mm", config_file_list=[str(best_yaml)],
                                config_dict={"checkpoint_dir": str(tmp_path / "saved")})
    assert dict(rerun["best_valid_result"]) == pytest.approx(best["valid"], abs=1e-12)
    assert dict(rerun["test_result"]) == pytest.approx(best["test"], abs=1e-12)

    # a sweep with other fixed settings refuses to reuse this journal
    with pytest.raises(ValueError, match="sasrec-trials.json was written by a sweep with different epochs"):
        tuning.sweep("SASRec", "scientific_mm", params_file, overrides={**TINY_SASREC, "epochs": 2},
                     output_file=output)


# ---------------------------------------------------------------------------------------- Ray Tune
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_hyper(*args, cwd):
    """run_hyper.py in a fresh interpreter (Ray's driver state stays out of the test process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(ROOT / "run_hyper.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout


def sweep_args(model, output, params_file, overrides):
    return [f"--model={model}", "--dataset=scientific_mm", f"--params_file={params_file}", "--tool=ray",
            f"--output_file={output}", *(f"--{k}={v}" for k, v in overrides.items())]


@pytest.mark.slow  # 40 s; the cluster test below runs the same sweep path on a Ray head
def test_ray_sweep_on_this_machine(tmp_path):
    params_file = write(tmp_path / "lr.test", "learning_rate choice [0.001,0.003]\n")
    output = tmp_path / "ray" / "sasrec.md"
    stdout = run_hyper(*sweep_args("SASRec", output, params_file, TINY_SASREC), "--cpus_per_trial=1",
                       cwd=tmp_path)
    assert "best params: {'learning_rate':" in stdout
    trials = json.loads((tmp_path / "ray" / "sasrec-trials.json").read_text())["trials"]
    assert sorted(t["params"]["learning_rate"] for t in trials) == [0.001, 0.003]
    assert all(t["status"] in tuning.FINISHED for t in trials)
    assert (tmp_path / "ray" / "sasrec-best.yaml").is_file() and (tmp_path / "ray" / "sasrec.csv").is_file()


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head node on 127.0.0.1 (2 CPUs), stopped afterwards: `ray start --block` ends its processes
    when it is terminated, so only what this fixture started is stopped."""
    port = free_port()
    ray = Path(sys.executable).parent / "ray"
    log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--num-gpus=0", "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
         f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while "block forever" not in (tmp_path / "ray-head.log").read_text():  # the head is up
        assert head.poll() is None and time.time() < deadline, (tmp_path / "ray-head.log").read_text()
        time.sleep(0.5)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)
        log.close()
        address_file = Path(get_ray_address_file(None))  # what `ray stop` would also remove
        if address_file.is_file() and address_file.read_text().endswith(f":{port}"):
            address_file.unlink()


def test_ray_sweep_on_a_cluster_stops_bad_trials_and_resumes(tmp_path, ray_head):
    # TextSASRec (a plugin model: registered inside the cluster's workers), 2 epochs, one trial at a time,
    # so that ASHA compares the second trial (a learning rate too small to learn) after its first epoch.
    params_file = write(tmp_path / "lr.test", "learning_rate choice [0.003,0.00001]\n")
    output = tmp_path / "cluster" / "textsasrec.md"
    args = sweep_args("TextSASRec", output, params_file, {**TINY_SASREC, "epochs": 2})
    args += [f"--ray_address={ray_head}", "--max_concurrent=1", "--grace_period=1"]
    run_hyper(*args, cwd=tmp_path)

    trials = json.loads((tmp_path / "cluster" / "textsasrec-trials.json").read_text())["trials"]
    by_lr = {t["params"]["learning_rate"]: t for t in trials}
    assert by_lr[0.003]["status"] == "finished" and by_lr[0.003]["epochs"] == 2 and by_lr[0.003]["test"]
    assert by_lr[0.00001]["status"] == "stopped early" and by_lr[0.00001]["epochs"] == 1
    assert by_lr[0.00001]["test"] == {}
    best_yaml = tmp_path / "cluster" / "textsasrec-best.yaml"
    assert yaml.safe_load(best_yaml.read_text())["learning_rate"] == 0.003

    stdout = run_hyper(*args, cwd=tmp_path)  # resumed: nothing left to run
    assert "2 of 2 trials already in" in stdout
    assert json.loads((tmp_path / "cluster" / "textsasrec-trials.json").read_text())["trials"] == trials
