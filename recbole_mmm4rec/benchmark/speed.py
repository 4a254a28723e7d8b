"""Speed benchmark: training epochs and full-sort evaluation of several models, timed interleaved in one run,
and the SSD's forward + backward time against the history length.

    python -m recbole_mmm4rec.benchmark.speed [--quick] [--models MMM4Rec SASRec ...] [--dataset scientific_mm]
        [--hidden-size 64] [--batch-size 1024] [--repeats 5] [--threads N] [--out benchmarks/results/speed]

Every model trains at the same width (``hidden_size``) and batch (``train_batch_size``) on the same dataset,
otherwise with its own defaults (MMM4Rec: ``properties/quick_cpu.yaml``, the ``make run`` size). After one
untimed warm-up epoch each, every repeat times one training epoch and one full-sort evaluation of the
validation users of each model, in a rotating order, so that a slow spell of a shared machine falls on all
models alike. Reported: s/epoch and evaluation users/s (median and min over repeats), the ratio of each
model's s/epoch to the first model's *within the same repeat* (median, min), trainable parameters, and the
peak memory of a fresh process that loads the data and trains a few batches of the model (RSS on CPU:
interpreter and data included; on CUDA torch's peak allocated memory). Then the chunked and quadratic SSD
(D = 64 sizes: H = 8 heads of P = 16, N = 16) forward + backward for L = 20 ... 1000, interleaved too, and
the ratio time(L = 1000) / time(L = 100) (10 would be linear).

Writes ``<out>/README.md`` (the tables) and ``<out>/speed.json`` (every timing), atomically.
``--quick``: MMM4Rec and SASRec, 3 repeats, L up to 1000 with fewer repeats: a few minutes on 2 CPU cores.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from time import perf_counter

import torch
from tqdm import tqdm

DEFAULT_MODELS = ["SASRec", "MMM4Rec", "TextSASRec", "UniSRec", "TAME", "TiM4Rec", "Mamba4Rec", "GRU4Rec"]
QUICK_MODELS = ["SASRec", "MMM4Rec"]
LENGTHS = [20, 50, 100, 200, 500, 1000]
QUADRATIC_UP_TO = 500  # [B, H, L, L] masks beyond that take GBs
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def model_config(model, hidden_size, batch_size, seed=2020):
    """Config files and dict of one model at the benchmark's width and batch."""
    files = [str(PROJECT_ROOT / "properties" / "quick_cpu.yaml")] if model == "MMM4Rec" else []
    config = {"hidden_size": hidden_size, "train_batch_size": batch_size, "seed": seed, "show_progress": False,
              "state": "WARNING", "log_tensorboard": False}
    return files, config


def build(model, dataset, hidden_size, batch_size):
    """(trainer, train_data, valid_data) of one model, RecBole's way, with our defaults."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    from recbole_mmm4rec.quick_start import build_config

    files, config_dict = model_config(model, hidden_size, batch_size)
    config = build_config(model, dataset, files, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    data = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, data)
    init_seed(config["seed"], config["reproducibility"])
    net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    return trainer, train_data, valid_data


def _synchronise():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_epoch(trainer, train_data, epoch):
    trainer.model.train()
    _synchronise()
    start = perf_counter()
    trainer._train_epoch(train_data, epoch, show_progress=False)
    _synchronise()
    return perf_counter() - start


def time_evaluation(trainer, valid_data):
    _synchronise()
    start = perf_counter()
    trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    _synchronise()
    return perf_counter() - start


def evaluation_users(valid_data):
    return int(valid_data._dataset.inter_num)


def _rss_mib(field):
    """VmRSS / VmHWM (peak) of this process from /proc, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(model, dataset, hidden_size, batch_size, steps):
    """In this (fresh) process: load and build, train ``steps`` batches; {"peak_mib", "kind"}."""
    trainer, train_data, _ = build(model, dataset, hidden_size, batch_size)
    trainer.model.train()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for step, interaction in enumerate(train_data):
        if step == steps:
            break
        interaction = interaction.to(trainer.device)
        trainer.optimizer.zero_grad()
        loss = trainer.model.calculate_loss(interaction)
        loss.backward()
        trainer.optimizer.step()
    if torch.cuda.is_available():
        return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20, "kind": "CUDA allocated"}
    return {"peak_mib": _rss_mib("VmHWM"), "kind": "RSS"}


def measure_memory(args, model):
    """``peak_memory`` of ``model`` in a child process (so that each model starts from a clean process)."""
    command = [sys.executable, "-m", "recbole_mmm4rec.benchmark.speed", "--memory-of", model,
               "--dataset", args.dataset, "--hidden-size", str(args.hidden_size),
               "--batch-size", str(args.batch_size), "--threads", str(torch.get_num_threads())]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"peak memory of {model} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ssd_inputs(length, batch, heads=8, head_dim=16, d_state=16, groups=1):
    """Inputs of ``ssd`` at the D = 64 sizes, realistic magnitudes, requiring grad."""
    g = torch.Generator().manual_seed(length)
    x = torch.randn(batch, length, heads, head_dim, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(batch, length, heads, generator=g))
    A = -torch.rand(heads, generator=g) * 15 - 1
    B, C = (torch.randn(batch, length, groups, d_state, generator=g) for _ in range(2))
    D = torch.ones(heads)
    return [t.requires_grad_() for t in (x, dt, A, B, C, D)]


def time_ssd(mode, length, batch, chunk_size):
    from recbole_mmm4rec.layers.ssd import ssd

    inputs = ssd_inputs(length, batch)
    start = perf_counter()
    ssd(*inputs, chunk_size=chunk_size, mode=mode).sum().backward()
    return perf_counter() - start


def summary(values):
    return {"median": statistics.median(values), "min": min(values)}


def run_models(args, progress):
    """Build every model, warm up, then time ``repeats`` rounds interleaved; the per-model figures."""
    built = {}
    for model in args.models:
        progress.set_description(f"building {model}")
        built[model] = build(model, args.dataset, args.hidden_size, args.batch_size)
        trainer, train_data, valid_data = built[model]
        progress.set_description(f"warm-up {model}")
        time_epoch(trainer, train_data, 0)
        time_evaluation(trainer, valid_data)
        progress.update(1)
    epochs, evals = {m: [] for m in args.models}, {m: [] for m in args.models}
    for repeat in range(args.repeats):
        order = args.models[repeat % len(args.models):] + args.models[:repeat % len(args.models)]
        for model in order:
            trainer, train_data, valid_data = built[model]
            progress.set_description(f"repeat {repeat + 1}/{args.repeats}: {model}")
            epochs[model].append(time_epoch(trainer, train_data, repeat + 1))
            evals[model].append(time_evaluation(trainer, valid_data))
            progress.update(1)
    reference = args.models[0]
    rows = {}
    for model in args.models:
        trainer, _, valid_data = built[model]
        users = evaluation_users(valid_data)
        progress.set_description(f"peak memory {model}")
        rows[model] = {
            "seconds_per_epoch": summary(epochs[model]),
            "eval_users_per_second": summary([users / t for t in evals[model]]),
            f"epoch_ratio_to_{reference}": summary([a / b for a, b in zip(epochs[model], epochs[reference])]),
            "parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "memory": measure_memory(args, model),
            "epoch_seconds": epochs[model], "eval_seconds": evals[model], "eval_users": users,
        }
        progress.update(1)
    return rows


def run_ssd(args, progress):
    """Chunked (every length) and quadratic (up to QUADRATIC_UP_TO) SSD forward + backward, interleaved."""
    times = {(mode, L): [] for L in args.lengths for mode in ("chunked", "quadratic")
             if mode == "chunked" or L <= QUADRATIC_UP_TO}
    for (mode, L) in times:  # warm-up
        time_ssd(mode, L, args.ssd_batch, args.chunk_size)
    for repeat in range(args.ssd_repeats):
        for (mode, L) in times:
            progress.set_description(f"SSD {mode} L={L} ({repeat + 1}/{args.ssd_repeats})")
            times[(mode, L)].append(time_ssd(mode, L, args.ssd_batch, args.chunk_size))
            progress.update(1)
    result = {f"{mode}@{L}": summary(t) | {"seconds": t} for (mode, L), t in times.items()}
    if 100 in args.lengths and 1000 in args.lengths:
        ratios = [a / b for a, b in zip(times[("chunked", 1000)], times[("chunked", 100)])]
        result["chunked_ratio_1000_to_100"] = summary(ratios)
    return result


def environment():
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "command": "python -m recbole_mmm4rec.benchmark.speed " + " ".join(sys.argv[1:])}


def markdown(result):
    args, env, models, ssd_result = result["settings"], result["environment"], result["models"], result["ssd"]
    reference = args["models"][0]
    lines = [
        "# Speed benchmark", "",
        f"`{env['command'].strip()}` on {env['date']}: {env['device']} ({env['cpu']}, {env['cpu_count']} cores), "
        f"torch {env['torch']} with {env['threads']} thread(s). Dataset `{args['dataset']}`, hidden_size "
        f"{args['hidden_size']}, train_batch_size {args['batch_size']}, {args['repeats']} timed repeats after "
        "one warm-up epoch, models interleaved (`recbole_mmm4rec/benchmark/speed.py`).", "",
        f"| model | s/epoch (median, min) | / {reference} (median, min) | eval users/s (median) | parameters "
        "| peak memory |",
        "|---|---|---|---|---|---|",
    ]
    for model, row in models.items():
        ratio = row[f"epoch_ratio_to_{reference}"]
        lines.append(
            f"| {model} | {row['seconds_per_epoch']['median']:.2f}, {row['seconds_per_epoch']['min']:.2f} "
            f"| {ratio['median']:.2f}, {ratio['min']:.2f} | {row['eval_users_per_second']['median']:,.0f} "
            f"| {row['parameters']:,} | {row['memory']['peak_mib']:,.0f} MiB {row['memory']['kind']} |")
    lines += ["", f"Ratios are taken within each repeat (the same minute of the machine), then summarised. "
              "Peak memory: a fresh process that loads the data and trains a few batches.", "",
              f"## SSD forward + backward (batch {args['ssd_batch']}, H = 8, P = 16, N = 16, chunk "
              f"{args['chunk_size']}; {args['ssd_repeats']} repeats)", "",
              "| L | chunked s (median) | quadratic s (median) |", "|---|---|---|"]
    for L in args["lengths"]:
        quadratic = ssd_result.get(f"quadratic@{L}")
        lines.append(f"| {L} | {ssd_result[f'chunked@{L}']['median']:.4f} | "
                     + (f"{quadratic['median']:.4f} |" if quadratic else "– |"))
    if "chunked_ratio_1000_to_100" in ssd_result:
        ratio = ssd_result["chunked_ratio_1000_to_100"]
        lines += ["", f"Chunked time(L = 1000) / time(L = 100): median {ratio['median']:.2f}, min {ratio['min']:.2f} "
                  "(10 is linear)."]
    return "\n".join(lines) + "\n"


def write_atomically(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m recbole_mmm4rec.benchmark.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="MMM4Rec and SASRec, fewer repeats: a few minutes")
    parser.add_argument("--models", nargs="+", help=f"first one is the ratios' reference (default {DEFAULT_MODELS})")
    parser.add_argument("--dataset", default="scientific_mm")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, help="timed epochs per model (default 5, --quick 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS, help="SSD lengths")
    parser.add_argument("--ssd-batch", type=int, default=16)
    parser.add_argument("--ssd-repeats", type=int, help="default 5, --quick 3")
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--out", default=str(PROJECT_ROOT / "benchmarks" / "results" / "speed"))
    parser.add_argument("--memory-of", metavar="MODEL", help=argparse.SUPPRESS)  # the peak-memory child
    args = parser.parse_args(argv)
    args.models = args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.ssd_repeats is None:
        args.ssd_repeats = 3 if args.quick else 5
    for name in ("hidden_size", "batch_size", "repeats", "ssd_batch", "ssd_repeats", "chunk_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(peak_memory(args.memory_of, args.dataset, args.hidden_size, args.batch_size, steps=3)))
        return 0
    from recbole_mmm4rec.quick_start import check_model_name, register
    register()
    for model in args.models:
        check_model_name(model, "--models")
    n_ssd = sum(1 for L in args.lengths for mode in ("chunked", "quadratic") if mode == "chunked" or L <= QUADRATIC_UP_TO)
    total = len(args.models) * (args.repeats + 2) + n_ssd * args.ssd_repeats
    with tqdm(total=total, unit="run") as progress:
        result = {"settings": vars(args), "environment": environment(),
                  "models": run_models(args, progress), "ssd": run_ssd(args, progress)}
    out = Path(args.out)
    write_atomically(out / "speed.json", json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    write_atomically(out / "README.md", text)
    print(text)
    print(f"written: {out / 'README.md'}, {out / 'speed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
