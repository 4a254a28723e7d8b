"""Training seconds per epoch with 1 process and with N processes (torchrun), interleaved.

    python -m recbole_mmm4rec.benchmark.processes [--processes 2] [--repeats 2] [--epochs 3]
        [--model MMM4Rec] [--dataset office] [--config_files properties/quick_cpu.yaml]

Each repeat runs ``run_recbole.py`` once as one process (all cores' worth of torch threads) and once under
``torchrun --nproc_per_node=N`` (the threads split between the processes), in alternating order, and reads
each epoch's training time from RecBole's log (the first epoch is left out: warm-up). Prints s/epoch of
both and their ratio within each repeat (median, min). On a CPU the processes share the same cores, so a
gain needs more cores than one process can use well; on a machine with one GPU per process it is the
usual data-parallel speed-up.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EPOCH_TIME = re.compile(r"epoch \d+ training \[time: ([\d.]+)s")
COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # RecBole colours its console log


def epoch_seconds(log):
    """The training seconds of every epoch in a RecBole console log, in order."""
    return [float(s) for s in EPOCH_TIME.findall(COLOUR.sub("", log))]


def train_seconds(processes, threads, args, checkpoint_dir):
    """Seconds of each training epoch after the first, from one run_recbole.py run."""
    command = [str(ROOT / "run_recbole.py"), f"--model={args.model}", f"--dataset={args.dataset}",
               f"--epochs={args.epochs}", f"--stopping_step={args.epochs}", "--show_progress=False",
               f"--checkpoint_dir={checkpoint_dir}"]
    if args.config_files:
        command.append(f"--config_files={args.config_files}")
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] + command
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable] + command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    seconds = epoch_seconds(done.stdout + done.stderr)
    if len(seconds) < 2:
        raise RuntimeError(f"expected {args.epochs} epoch times in the log of {' '.join(command)}, got {seconds}")
    return seconds[1:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="per run; the first is left out")
    parser.add_argument("--model", default="MMM4Rec")
    parser.add_argument("--dataset", default="office")
    parser.add_argument("--config_files", default="properties/quick_cpu.yaml")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads of the single process (split between the N processes)")
    args = parser.parse_args(argv)
    if args.processes < 2 or args.repeats < 1 or args.epochs < 2:
        parser.error("--processes >= 2, --repeats >= 1 and --epochs >= 2")
    threads_each = max(1, args.threads // args.processes)
    one, several, ratios = [], [], []
    with tempfile.TemporaryDirectory() as checkpoints:
        for repeat in range(args.repeats):
            order = [(1, args.threads), (args.processes, threads_each)]
            times = {}
            for processes, threads in order if repeat % 2 == 0 else order[::-1]:
                times[processes] = statistics.median(train_seconds(processes, threads, args, checkpoints))
                print(f"repeat {repeat}: {processes} process(es) x {threads} thread(s): "
                      f"{times[processes]:.2f} s/epoch", flush=True)
            one.append(times[1])
            several.append(times[args.processes])
            ratios.append(times[1] / times[args.processes])
    print(f"{args.model} on {args.dataset}, {os.cpu_count()} cores: 1 process {statistics.median(one):.2f} s/epoch, "
          f"{args.processes} processes {statistics.median(several):.2f} s/epoch; speed-up (1 / {args.processes}) "
          f"median {statistics.median(ratios):.2f}, min {min(ratios):.2f} over {args.repeats} repeats")


if __name__ == "__main__":
    main()
