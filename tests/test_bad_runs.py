"""Finished work is never lost: a second pre-training into a folder that holds one is refused, a benchmark
cell never trains twice at once, and a killed benchmark runner leaves no orphan that records a cell."""

import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest
import yaml

import recbole_mmm4rec
from recbole_mmm4rec.benchmark import cells
from recbole_mmm4rec.benchmark.__main__ import main


def _fake_finished_run(checkpoint_dir):
    run_dir = Path(checkpoint_dir) / "MMM4Rec-pretrain-scientific_mm"
    run_dir.mkdir(parents=True)
    for name in ("best.pth", "last.pth"):
        (run_dir / name).write_bytes(f"finished run: {name}".encode())
    return run_dir


def test_a_finished_pretraining_run_is_not_overwritten(tmp_path, monkeypatch):
    run_dir = _fake_finished_run(tmp_path)
    loaded = []
    monkeypatch.setattr(recbole_mmm4rec.quick_start, "create_dataset", lambda config: loaded.append(config))
    with pytest.raises(FileExistsError) as error:
        recbole_mmm4rec.pretrain(["scientific_mm"], config_dict={"checkpoint_dir": str(tmp_path)})
    message = str(error.value)
    assert str(run_dir) in message and "best.pth" in message and "--resume" in message and "--overwrite" in message
    assert not loaded
    assert (run_dir / "best.pth").read_bytes() == b"finished run: best.pth"
    assert (run_dir / "last.pth").read_bytes() == b"finished run: last.pth"


@pytest.mark.parametrize("flags", [{"resume": True}, {"overwrite": True}])
def test_resume_or_overwrite_says_what_to_do_with_it(tmp_path, monkeypatch, flags):
    _fake_finished_run(tmp_path)

    def stop(config):
        raise RuntimeError("got past the check")

    monkeypatch.setattr(recbole_mmm4rec.quick_start, "create_dataset", stop)
    with pytest.raises(RuntimeError, match="got past the check"):
        recbole_mmm4rec.pretrain(["scientific_mm"], config_dict={"checkpoint_dir": str(tmp_path)}, **flags)


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="give one of them"):
        recbole_mmm4rec.pretrain(["scientific_mm"], config_dict={"checkpoint_dir": str(tmp_path)},
                                 resume=True, overwrite=True)


def test_the_command_line_refuses_a_second_pretraining(tmp_path):
    run_dir = _fake_finished_run(tmp_path)
    result = subprocess.run([sys.executable, str(recbole_mmm4rec.quick_start.PROJECT_ROOT / "run_recbole.py"),
                             "--model=MMM4Rec", "--stage=pretrain", "--dataset=scientific_mm",
                             f"--checkpoint_dir={tmp_path}"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode != 0
    assert f"{run_dir} already holds a pre-training run" in result.stderr
    assert (run_dir / "best.pth").read_bytes() == b"finished run: best.pth"


def _pop_spec(folder):
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump({"models": ["Pop"], "seeds": [2020],
                                    "datasets": {"scientific_mm": {"epochs": 1, "stopping_step": 0}}}))
    return path


def test_a_cell_being_trained_elsewhere_is_not_started_twice(tmp_path):
    spec = _pop_spec(tmp_path)
    out = tmp_path / "results" / "bench"
    log = cells.log_file(out, "Pop", "scientific_mm", 2020)
    log.parent.mkdir(parents=True)
    log.write_text("the other run's log\n")
    output = StringIO()
    with cells.cell_lock(out, "Pop", "scientific_mm", 2020), redirect_stdout(output):
        assert main([str(spec)]) == 0  # nothing failed: the cell is someone else's
        assert main([str(spec), "--cell", "Pop", "scientific_mm", "2020"]) == 1
    text = output.getvalue()
    assert ("not started: Pop on scientific_mm, seed 2020 is being trained by another process "
            f"(pid {os.getpid()}") in text
    assert "1 running in another process" in text
    assert log.read_text() == "the other run's log\n"
    assert not cells.cell_file(out, "Pop", "scientific_mm", 2020).exists()


def _children(pid):
    tasks = Path(f"/proc/{pid}/task")
    found = []
    for task in tasks.iterdir() if tasks.is_dir() else ():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_runner_leaves_no_orphan(tmp_path):
    spec = _pop_spec(tmp_path)
    runner = subprocess.Popen([sys.executable, "-m", "recbole_mmm4rec.benchmark", str(spec)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.time() + 120
    while not _children(runner.pid) and time.time() < deadline and runner.poll() is None:
        time.sleep(0.2)
    children = _children(runner.pid)
    assert children, "the runner started no cell"
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.time() + 30
    while any(_alive(c) for c in children) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(c) for c in children)
    time.sleep(1)
    assert not cells.cell_file(tmp_path / "results" / "bench", "Pop", "scientific_mm", 2020).exists()


def test_resume_from_a_broken_last_pth_names_the_file(tmp_path):
    run_dir = tmp_path / "MMM4Rec-pretrain-scientific_mm"
    run_dir.mkdir()
    (run_dir / "last.pth").write_bytes(b"")
    with pytest.raises(ValueError) as error:
        recbole_mmm4rec.pretrain(["scientific_mm"], resume=True,
                                 config_dict={"checkpoint_dir": str(tmp_path), "hidden_size": 32, "inner_size": 32,
                                              "head_dim": 16, "n_groups": 2, "d_state": 8, "show_progress": False})
    assert f"--resume: {run_dir / 'last.pth'} is empty" in str(error.value)


def test_a_bad_pretrained_file_fails_before_the_data_is_loaded(tmp_path, monkeypatch):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    loaded = []
    monkeypatch.setattr(recbole_mmm4rec.quick_start, "create_dataset", lambda config: loaded.append(config))
    with pytest.raises(ValueError, match=f"pretrained: {empty} is empty"):
        recbole_mmm4rec.run("MMM4Rec", "scientific_mm", config_dict={"pretrained": str(empty)}, saved=False)
    assert not loaded
