"""One benchmark cell = one (model, dataset, seed) run of ``recbole_mmm4rec.run``, recorded as JSON.

The runner starts every cell in a fresh Python process (``python -m recbole_mmm4rec.benchmark SPEC
--cell MODEL DATASET SEED``): cells cannot leak state into each other, and the process's peak memory is
the cell's own. The child writes ``cells/<dataset>/<model>/seed<seed>.json`` atomically, also when training
fails; the parent streams the child's output into ``logs/<dataset>/<model>-seed<seed>.log`` and prints one
line per epoch. A cell resumes: while it trains, ``partial/<dataset>/<model>/seed<seed>/`` holds its
checkpoints and a resume point written after every epoch (``recbole_mmm4rec.resume``), so a cell killed
mid-way (a runner stopped, a session ended) continues after its last finished epoch next time, with the
result of an uninterrupted run; the folder goes when the cell is recorded. A lock file per cell
(``seed<seed>.lock``, held while it trains) keeps a second runner from training the same cell at once,
and the child dies with its runner (Linux), so a killed runner leaves no orphan that records a cell later.
"""

import ctypes
import fcntl
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from time import perf_counter

from recbole_mmm4rec import distributed
from recbole_mmm4rec.benchmark.spec import resolve
from recbole_mmm4rec.compat import write_text_atomically


def cell_file(out, model, dataset, seed):
    return Path(out) / "cells" / dataset / model / f"seed{seed}.json"


def log_file(out, model, dataset, seed):
    return Path(out) / "logs" / dataset / f"{model}-seed{seed}.log"


def partial_dir(out, model, dataset, seed):
    """Where an unfinished cell keeps its checkpoints and resume point (removed once it is recorded)."""
    return Path(out) / "partial" / dataset / model / f"seed{seed}"


def lock_file(out, model, dataset, seed):
    return cell_file(out, model, dataset, seed).with_suffix(".lock")


# Set by the runner for its child: the lock the runner holds for it.
LOCK_ENV = "RECBOLE_MMM4REC_CELL_LOCK"


class CellBusy(RuntimeError):
    """The cell is being trained by another process."""


@contextmanager
def cell_lock(out, model, dataset, seed):
    """Hold the cell's lock while it runs; ``CellBusy`` if another process holds it. The kernel releases
    the lock when its holder dies, kill -9 included. A runner's child runs under its parent's lock."""
    path = lock_file(out, model, dataset, seed)
    if os.environ.get(LOCK_ENV) == str(path):
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CellBusy(f"{model} on {dataset}, seed {seed} is being trained by another process "
                           f"(pid {holder}, lock {path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# prctl resolved here, in the runner: the child calls it between fork and exec, where it must not import
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_runner(runner):
    """``preexec_fn`` of a cell's process (Linux): SIGKILL when the runner dies (``PR_SET_PDEATHSIG``, set
    before the child runs anything, so there is no window), and exit at once if it already has."""
    def setup():
        _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != runner:
            os._exit(1)
    return setup if _PRCTL is not None else None


def read_cell(path):
    """The recorded cell, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_finished(cell, settings):
    """A cell counts as done when it succeeded with the settings the benchmark file gives it now."""
    return bool(cell) and cell.get("status") == "ok" and cell.get("settings") == _as_json(settings)


def write_json_atomically(path, data):
    write_text_atomically(path, json.dumps(data, indent=1) + "\n")


# --- in the child process -------------------------------------------------------------------------------

def train_cell(bench, out, model, dataset, seed, cells_at_once=1):
    """Train and test one cell in this process; write its JSON (``status`` ok or failed). Returns the record.

    ``cells_at_once``: how many cells shared the machine with this one (``--jobs``), kept with its timings.
    Under torchrun every rank trains and rank 0 alone writes the JSON (its ``processes``: the ranks)."""
    settings = bench.settings(model, dataset, seed)
    record = {"model": model, "dataset": dataset, "seed": seed, "settings": _as_json(settings)}
    try:
        record.update(status="ok", **_train(bench.model_of(model), dataset, settings,
                                            partial_dir(out, model, dataset, seed)))
    except Exception as error:  # recorded, so that one failing cell never loses the others
        traceback.print_exc()
        record.update(status="failed", error=f"{type(error).__name__}: {error}")
    record.update(log=str(log_file(out, model, dataset, seed).relative_to(out)), environment=_environment(cells_at_once),
                  finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if distributed.is_main():
        write_json_atomically(cell_file(out, model, dataset, seed), record)
        shutil.rmtree(partial_dir(out, model, dataset, seed), ignore_errors=True)
    return record


def _train(model, dataset, settings, partial):
    """``run()`` of the cell; checkpoints and the resume point in ``partial``, kept from an earlier try with
    the same settings (resumed) and cleared when the settings differ."""
    import torch

    from recbole_mmm4rec.quick_start import run

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    files = [str(resolve(f)) for f in settings["config_files"]]
    started = partial / "settings.json"
    if distributed.is_main() and read_cell(started) != _as_json(settings):
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        write_json_atomically(started, settings)
    distributed.barrier()
    config = {**settings["config"], "checkpoint_dir": str(partial / "checkpoints"), "show_progress": False}
    if config.get("pretrained"):  # a transfer row's encoder, from the project root like the config files
        config["pretrained"] = str(resolve(config["pretrained"]))
    result = run(model, dataset, files, config, saved=True,  # saved: the test uses the best epoch
                 resume_file=str(partial / "resume.pth"))
    return {**summarise(result), "resumed_after_epoch": result["resumed_after_epoch"]}


def summarise(result):
    """What a cell records from ``run()``'s result: test metrics, convergence, time, size, memory."""
    history, metric = result["history"], result["valid_metric"]
    valid = [(h["epoch"], h["valid"][metric]) for h in history if "valid" in h]
    return {
        "test": {k: float(v) for k, v in result["test_result"].items()},
        "best_valid": {k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
        "valid_metric": metric,
        "best_epoch": _best_epoch(valid, result["valid_score_bigger"]),
        "epochs_run": len(history),
        "train_seconds_per_epoch": sum(h["train_seconds"] for h in history) / max(len(history), 1),
        "fit_seconds_per_epoch": result["fit_seconds"] / max(len(history), 1),
        "fit_seconds": result["fit_seconds"],
        "test_seconds": result["test_seconds"],
        "parameters": result["parameters"],
        **_peak_memory(),
        "history": history,
    }


def _best_epoch(valid, bigger):
    """1-based epoch of the checkpoint RecBole tests: the last epoch that reached the best validation score
    (RecBole's early stopping keeps a later epoch on a tie)."""
    if not valid:
        return None
    best = max(v for _, v in valid) if bigger else min(v for _, v in valid)
    return [epoch for epoch, v in valid if v == best][-1] + 1


def _peak_memory():
    """The GPU's peak allocated memory when the run used CUDA, else this process's peak resident memory."""
    import torch

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return {"peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20, "peak_memory_kind": "GPU"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"peak_memory_mib": peak / (2**20 if sys.platform == "darwin" else 2**10), "peak_memory_kind": "RSS"}


def _environment(cells_at_once):
    import recbole
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return {"device": device, "torch_threads": torch.get_num_threads(), "cells_at_once": cells_at_once,
            "processes": distributed.world_size(),
            "python": platform.python_version(), "torch": torch.__version__, "recbole": recbole.__version__}


def _as_json(data):
    return json.loads(json.dumps(data))


# --- in the parent process ------------------------------------------------------------------------------

def run_in_subprocess(bench, out, model, dataset, seed, jobs=1, label=""):
    """Run one cell in a fresh Python process, streaming its output to the cell's log. Returns the record.

    ``jobs``: cells running at once (recorded by the child); then each progress line starts with ``label``."""
    with cell_lock(out, model, dataset, seed):  # CellBusy before anything of the other run is touched
        return _run_child(bench, out, model, dataset, seed, jobs, label)


def _run_child(bench, out, model, dataset, seed, jobs, label):
    cell_path, log_path = cell_file(out, model, dataset, seed), log_file(out, model, dataset, seed)
    cell_path.unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "recbole_mmm4rec.benchmark", str(bench.path), "--out", str(out),
               "--jobs", str(jobs), "--cell", model, dataset, str(seed)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", LOCK_ENV: str(lock_file(out, model, dataset, seed))}
    start = perf_counter()
    with open(log_path, "w", buffering=1) as log:  # line-buffered: the log is current while the cell runs
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                 preexec_fn=_die_with_runner(os.getpid()))
        progress = EpochProgress(prefix=f"{label}, " if jobs > 1 else "")
        for line in child.stdout:
            log.write(line)
            progress.show(line)
        returncode = child.wait()
    record = read_cell(cell_path)
    if record is None:  # the child died before writing its record (killed, out of memory, ...)
        tail = _tail(log_path)
        last = tail.strip().splitlines()[-1] if tail.strip() else "no output"
        record = {"model": model, "dataset": dataset, "seed": seed,
                  "settings": _as_json(bench.settings(model, dataset, seed)), "status": "failed",
                  "error": f"its process exited with code {returncode} before writing a record: {last}",
                  "log_tail": tail, "log": str(log_path.relative_to(out))}
        write_json_atomically(cell_path, record)
    record["wall_seconds"] = perf_counter() - start
    return record


class EpochProgress:
    """Turns RecBole's epoch log lines into one short progress line per evaluated epoch."""

    TRAIN = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s")
    VALID = re.compile(r"epoch (\d+) evaluating \[time: [\d.]+s, valid_score: ([-\d.]+)\]")
    COLOR = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, prefix=""):
        self.prefix, self.train_seconds = prefix, None

    def show(self, line):
        line = self.COLOR.sub("", line)
        if match := self.TRAIN.search(line):
            self.train_seconds = float(match.group(2))
        elif match := self.VALID.search(line):
            print(f"      {self.prefix}epoch {int(match.group(1)) + 1:>3}: train {self.train_seconds or 0:.1f}s, "
                  f"valid score {float(match.group(2)):.4f}", flush=True)


def _tail(path, lines=15):
    return "".join(Path(path).read_text(errors="replace").splitlines(keepends=True)[-lines:])
