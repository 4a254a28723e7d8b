"""Transfer studies: a benchmark file whose rows fine-tune from encoders that its ``pretrain`` section makes.

    python -m recbole_mmm4rec.transfer_report reports/transfer.yaml [--report-only] [--out DIR]

1. ``pretrain_encoders``: every encoder × target of ``pretrain``, ``--stage=pretrain`` on that target's
   corpus into ``pretrained/<name>/<label>-for-<target>/`` (each in a fresh process; an interrupted one resumes
   from its ``last.pth``; a finished one has ``done.json`` and is skipped while its settings are unchanged).
2. The benchmark's cells (``benchmark.__main__.run_all``): every row × target × seed, resumable per cell. A row
   with ``pretrained: <encoder>`` fine-tunes from that encoder's ``best.pth`` for its target; a row with
   ``config: {epochs: 0}`` is evaluated without training (zero-shot).
3. ``write_transfer_report``: per target, per run and as mean ± std over the seeds: the epoch at which
   validation NDCG@10 first reaches 95 % and 100 % of the best of the row's ``compare_to`` run (the
   from-scratch row, same seed), the best epoch, test R@10/R@50/N@10/N@50 and s/epoch, with how many of the
   planned runs are done; and the validation NDCG@10 curves, mean with the seeds' spread as a band
   (``transfer.md``, ``transfer.csv``, ``transfer.json``, ``transfer_<target>.png`` in the results folder).
"""

import csv
import fcntl
import json
import statistics
import subprocess
import sys
from datetime import datetime, timezone

from recbole_mmm4rec.benchmark.cells import _as_json, cell_file, read_cell, write_json_atomically
from recbole_mmm4rec.benchmark.spec import resolve

METRIC = "ndcg@10"
TEST_COLUMNS = ("recall@10", "recall@50", "ndcg@10", "ndcg@50")
THRESHOLDS = (0.95, 1.0)


# --- 1. pre-training ------------------------------------------------------------------------------------

def encoders(bench):
    """Every (encoder label, target) to pre-train, in the spec's order."""
    return [(label, target) for label, entry in (bench.pretrain or {}).items() for target in entry["corpus"]]


def pretrain_encoders(bench, log=print):
    """Pre-train every encoder that is not finished with its current settings; returns how many failed."""
    failed, todo = 0, encoders(bench)
    for i, (label, target) in enumerate(todo, 1):
        entry, done = bench.pretrain[label], bench.encoder_dir(label, target) / "done.json"
        head = f"[{i}/{len(todo)}] encoder {label} for {target} ({entry['model']} on {'+'.join(entry['corpus'][target])})"
        if done.is_file() and json.loads(done.read_text()).get("settings") == _as_json(entry):
            log(f"{head}: skipped, pre-trained before (delete {done} to redo it)")
            continue
        log(f"{head}: pre-training (checkpoints in {bench.encoder_dir(label, target)})")
        command = [sys.executable, "-m", "recbole_mmm4rec.transfer_report", str(bench.path), "--encoder", label, target]
        if subprocess.run(command).returncode != 0:
            log(f"{head}: FAILED (the fine-tuning rows that need it will fail too)")
            failed += 1
    return failed


def pretrain_one(bench, label, target):
    """``--stage=pretrain`` of one encoder for one target, in this process; resumes a run with the same
    settings from its ``last.pth``, replaces one with other settings. Writes ``done.json`` at the end."""
    from recbole_mmm4rec.quick_start import pretrain

    entry, folder = bench.pretrain[label], bench.encoder_dir(label, target)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:  # two studies sharing an encoder never train it at once
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"{folder} is being pre-trained by another process; run this study after it") from None
        started, settings = folder / "settings.json", _as_json(entry)
        last = bench.encoder_checkpoint(label, target).with_name("last.pth")
        resume = last.is_file() and started.is_file() and json.loads(started.read_text()) == settings
        write_json_atomically(started, settings)
        sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value overrides from the command line: none here
        history, run_dir = pretrain(entry["corpus"][target], [str(resolve(f)) for f in entry["config_files"]],
                                    {**entry["config"], "checkpoint_dir": str(folder)}, resume=resume,
                                    model=entry["model"], overwrite=not resume)
        write_json_atomically(folder / "done.json", {
            "settings": settings, "run_dir": str(run_dir), "epochs": len(history),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "history": [{k: h[k] for k in ("epoch", "loss", "seconds", "valid")} for h in history]})


# --- 3. the report --------------------------------------------------------------------------------------

def _curve(cell):
    return [h["valid"][METRIC] for h in cell["history"] if "valid" in h]


def first_epoch_reaching(curve, level):
    """1-based first epoch whose value is at least ``level``; None if none is."""
    return next((epoch for epoch, value in enumerate(curve, 1) if value >= level), None)


def run_summary(cell, scratch_cell):
    """One run: its convergence against the scratch run of the same seed, test metrics, s/epoch."""
    curve, scratch_curve = _curve(cell), _curve(scratch_cell) if scratch_cell else []
    scratch_best = max(scratch_curve) if scratch_curve else None
    reach = {f"epochs_to_{round(t * 100)}": (first_epoch_reaching(curve, t * scratch_best)
                                              if scratch_best is not None else None) for t in THRESHOLDS}
    return {"seed": cell["seed"], "zero_shot": cell["epochs_run"] == 0, "best_epoch": cell["best_epoch"],
            "epochs_run": cell["epochs_run"], "best_valid": max(curve) if curve else cell["best_valid"].get(METRIC),
            "scratch_best_valid": scratch_best, **reach, "test": {k: cell["test"][k] for k in TEST_COLUMNS},
            "seconds_per_epoch": cell["train_seconds_per_epoch"], "curve": curve}


def collect(bench, out):
    """{target: {row: [run summaries]}} of the finished cells, and the number planned / done."""
    found, planned, done = {}, 0, 0
    for target in bench.datasets:
        for row in bench.models:
            scratch_row = (bench.compare_to or {}).get(row, row)
            runs = []
            for seed in bench.seeds:
                planned += 1
                cell = read_cell(cell_file(out, row, target, seed))
                if not cell or cell.get("status") != "ok":
                    continue
                done += 1
                scratch = read_cell(cell_file(out, scratch_row, target, seed))
                runs.append(run_summary(cell, scratch if scratch and scratch.get("status") == "ok" else None))
            found.setdefault(target, {})[row] = runs
    return found, planned, done


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def _reached(runs, key):
    """Mean ± std over the runs that reached the level, and how many did not."""
    text = _mean_std([r[key] for r in runs])
    missed = sum(r[key] is None for r in runs)
    return text + (f" ({missed} never)" if missed and text != "—" else "")


def markdown(bench, found, planned, done):
    lines = [f"# Transfer: {bench.name}", "", bench.description.strip(), "",
             f"{done} of {planned} planned runs are done. Epochs to 95 % / 100 %: the first epoch whose validation "
             f"NDCG@10 reaches that share of the best validation NDCG@10 of the row's from-scratch run (same seed; "
             f"a from-scratch row is compared with itself). Mean ± std over the seeds; test metrics at the best "
             f"validation epoch (full ranking). Zero-shot rows (epochs 0) are evaluated without any training.", ""]
    header = ("| row | pre-trained on | runs | epochs to 95 % | epochs to 100 % | best epoch | "
              + " | ".join(f"test {c.replace('recall', 'R').replace('ndcg', 'N')}" for c in TEST_COLUMNS) + " | s/epoch |")
    for target, rows in found.items():
        lines += [f"## {target}", "", header, "|---" * (7 + len(TEST_COLUMNS)) + "|"]
        for row, runs in rows.items():
            encoder = (bench.pretrained or {}).get(row)
            corpus = "+".join(bench.pretrain[encoder]["corpus"][target]) + f" ({encoder})" if encoder else "—"
            zero = runs and runs[0]["zero_shot"]
            cells = [row + (" (zero-shot)" if zero else ""), corpus, str(len(runs))]
            cells += ["—"] * 3 if zero else [_reached(runs, "epochs_to_95"), _reached(runs, "epochs_to_100"),
                                              _mean_std([r["best_epoch"] for r in runs])]
            cells += [_mean_std([r["test"][c] for r in runs]) for c in TEST_COLUMNS]
            cells.append("—" if zero else _mean_std([r["seconds_per_epoch"] for r in runs]))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"![validation NDCG@10 per epoch](transfer_{target}.png)", ""]
    return "\n".join(lines) + "\n"


def write_csv(found, path):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["target", "row", "seed", "zero_shot", "epochs_to_95", "epochs_to_100", "best_epoch",
                         "epochs_run", "best_valid_ndcg@10", "scratch_best_valid_ndcg@10", *TEST_COLUMNS, "s_per_epoch"])
        for target, rows in found.items():
            for row, runs in rows.items():
                for r in runs:
                    writer.writerow([target, row, r["seed"], r["zero_shot"], r["epochs_to_95"], r["epochs_to_100"],
                                     r["best_epoch"], r["epochs_run"], r["best_valid"], r["scratch_best_valid"],
                                     *(r["test"][c] for c in TEST_COLUMNS), r["seconds_per_epoch"]])


def plot(target, rows, path):
    """Validation NDCG@10 per epoch of every trained row: the mean over the seeds that ran that epoch, and
    their minimum to maximum as a band; zero-shot rows as a dashed level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, runs in rows.items():
        curves = [r["curve"] for r in runs if r["curve"]]
        if runs and runs[0]["zero_shot"]:
            ax.axhline(statistics.mean(r["best_valid"] for r in runs), linestyle="--", linewidth=1, label=f"{row} (zero-shot)")
            continue
        if not curves:
            continue
        epochs = range(1, max(map(len, curves)) + 1)
        at = [[c[e - 1] for c in curves if len(c) >= e] for e in epochs]
        seeds = f"{len(curves)} seed" + ("s" if len(curves) > 1 else "")
        (line,) = ax.plot(epochs, [statistics.mean(v) for v in at], label=f"{row} ({seeds})")
        ax.fill_between(epochs, [min(v) for v in at], [max(v) for v in at], color=line.get_color(), alpha=0.2)
    ax.set(xlabel="epoch", ylabel="validation NDCG@10", title=f"transfer to {target}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_transfer_report(bench, out):
    """``transfer.md``, ``transfer.csv``, ``transfer.json`` and one ``transfer_<target>.png`` per target in
    ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    found, planned, done = collect(bench, out)
    paths = [out / "transfer.md", out / "transfer.csv", out / "transfer.json"]
    paths[0].write_text(markdown(bench, found, planned, done), encoding="utf-8")
    write_csv(found, paths[1])
    write_json_atomically(paths[2], {"planned_runs": planned, "done_runs": done, "targets": found,
                                     "encoders": {f"{label}-for-{target}": _done(bench, label, target)
                                                  for label, target in encoders(bench)}})
    for target, rows in found.items():
        paths.append(out / f"transfer_{target}.png")
        plot(target, rows, paths[-1])
    return paths


def _done(bench, label, target):
    path = bench.encoder_dir(label, target) / "done.json"
    return json.loads(path.read_text()) if path.is_file() else None
