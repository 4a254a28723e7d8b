"""Tables and plots from the recorded cells: per dataset ``<dataset>.md``, ``<dataset>.csv`` and
``<dataset>_valid_ndcg.png``, and ``README.md`` listing them with the command that made them."""

import csv
import os
import statistics
from pathlib import Path

from recbole_mmm4rec.benchmark.cells import cell_file, is_finished, read_cell
from recbole_mmm4rec.benchmark.spec import TABLE_METRICS
from recbole_mmm4rec.quick_start import PROJECT_ROOT

SHORT = {"recall@10": "R@10", "recall@50": "R@50", "ndcg@10": "N@10", "ndcg@50": "N@50"}


def write_reports(bench, out):
    """Write every dataset's table, CSV and plot, and the README; returns the written paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, sections = [], {}
    for dataset in bench.datasets:
        rows = [model_row(bench, out, model, dataset) for model in bench.models]
        sections[dataset] = dataset_section(bench, dataset, rows)
        (out / f"{dataset}.md").write_text(f"# Benchmark `{bench.name}`: `{dataset}`\n\n{sections[dataset]}")
        write_csv(out / f"{dataset}.csv", rows, bench.reference.get(dataset))
        plot_valid(out / f"{dataset}_valid_ndcg.png", dataset, rows)
        written += [out / f"{dataset}.md", out / f"{dataset}.csv", out / f"{dataset}_valid_ndcg.png"]
    (out / "README.md").write_text(readme(bench, out, sections))
    return written + [out / "README.md"]


# --- one row per model ----------------------------------------------------------------------------------

def model_row(bench, out, model, dataset):
    """Mean and spread over the seeds of one model's finished cells on one dataset, and its failures."""
    cells = {seed: read_cell(cell_file(out, model, dataset, seed)) for seed in bench.seeds}
    done = [c for s, c in cells.items() if is_finished(c, bench.settings(model, dataset, s))]
    failed = [c for c in cells.values() if c and c.get("status") == "failed"]
    row = {"model": model, "seeds_done": len(done), "seeds": len(bench.seeds), "failed": failed, "curves": []}
    if not done:
        return row
    metrics = sorted(set.intersection(*(set(c["test"]) for c in done)), key=_metric_order)
    for metric in metrics:
        values = [c["test"][metric] for c in done]
        row[metric] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    row.update(
        best_epoch=_mean(c["best_epoch"] for c in done),
        epochs_run=_mean(c["epochs_run"] for c in done),
        train_seconds_per_epoch=_mean(c["train_seconds_per_epoch"] for c in done),
        fit_seconds_per_epoch=_mean(c["fit_seconds_per_epoch"] for c in done),
        parameters=max(c["parameters"] for c in done),
        peak_memory_mib=max(c["peak_memory_mib"] for c in done),
        peak_memory_kind="/".join(sorted({c["peak_memory_kind"] for c in done})),
        metrics=metrics,
        valid_metric=done[0]["valid_metric"],
        curves=[[h["valid"][c["valid_metric"]] for h in c["history"] if "valid" in h] for c in done],
        machines=sorted({_machine(c) for c in done}),
    )
    return row


def _machine(cell):
    """Where a cell ran, in short: the device, and how many cells shared it."""
    env = cell.get("environment", {})
    at_once = env.get("cells_at_once", 1)
    return env.get("device", "unknown machine") + (f", {at_once} cells at once" if at_once > 1 else "")


def _metric_order(metric):
    return (TABLE_METRICS.index(metric) if metric in TABLE_METRICS else len(TABLE_METRICS), metric)


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


# --- markdown -------------------------------------------------------------------------------------------

def dataset_section(bench, dataset, rows):
    """The table of one dataset with the notes a reader needs to read it."""
    reference = bench.reference.get(dataset)
    best = {m: max((r[m][0] for r in rows if m in r), default=None) for m in TABLE_METRICS}
    header = ["model", *(f"test {SHORT[m]}" for m in TABLE_METRICS), "best epoch", "train s/epoch",
              "fit s/epoch", "parameters", "peak memory", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += [_markdown_row(row, best) for row in rows]
    if reference:
        lines += [_reference_row(label, figures) for label, figures in reference["models"].items()]
    budget = ", ".join(f"{k}: {v}" for k, v in bench.datasets[dataset].items())
    notes = [
        "",
        (f"Test metrics: mean ± sample standard deviation over the seeds {', '.join(map(str, bench.seeds))} "
         if len(bench.seeds) > 1 else f"Test metrics of one run (seed {bench.seeds[0]}) ")
        + "(RecBole full ranking over all items, leave-one-out split of `properties/overall.yaml`, the same for "
        "every model); the best mean per column is in bold. **best epoch**: the 1-based epoch whose validation "
        "score selected the tested checkpoint (mean over seeds). **train s/epoch**: training only; **fit "
        "s/epoch**: training and validation. **parameters**: trainable. **peak memory**: the largest over the "
        "seeds, of the cell's own process (RSS: resident memory on CPU, including the interpreter and the "
        "data; GPU: torch's peak allocated CUDA memory).",
        "",
        f"Budget for every model: {budget}.",
    ]
    if reference:
        notes += ["", f"Rows marked (paper): {reference['source']}"]
    notes += _machine_notes(rows)
    notes += _failure_notes(rows)
    return "\n".join(lines + notes) + f"\n\n![validation NDCG@10 per epoch]({dataset}_valid_ndcg.png)\n"


def _markdown_row(row, best):
    if not row["seeds_done"]:
        status = f"failed ({len(row['failed'])}/{row['seeds']})" if row["failed"] else f"0/{row['seeds']}"
        return "| " + " | ".join([row["model"], *["–"] * 9, status]) + " |"
    cells = [row["model"]]
    for metric in TABLE_METRICS:
        if metric not in row:
            cells.append("–")
            continue
        mean, std = row[metric]
        text = f"{mean:.4f} ± {std:.4f}" if row["seeds_done"] > 1 else f"{mean:.4f}"
        cells.append(f"**{text}**" if mean == best[metric] else text)
    cells += [_number(row["best_epoch"], 1), _number(row["train_seconds_per_epoch"], 2),
              _number(row["fit_seconds_per_epoch"], 2), f"{row['parameters']:,}",
              f"{row['peak_memory_mib']:,.0f} MiB {row['peak_memory_kind']}", f"{row['seeds_done']}/{row['seeds']}"]
    return "| " + " | ".join(cells) + " |"


def _reference_row(label, figures):
    metrics = [f"{figures[m]:.4f}" if m in figures else "–" for m in TABLE_METRICS]
    return "| " + " | ".join([f"{label} (paper)", *metrics, *["–"] * 6]) + " |"


def _number(value, digits):
    return "–" if value is None else f"{value:.{digits}f}"


def _machine_notes(rows):
    """Which rows ran where, when a dataset's cells ran on more than one machine (timings and memory compare
    only within one)."""
    by_machine = {}
    for row in rows:
        for machine in row.get("machines", []):
            by_machine.setdefault(machine, []).append(row["model"])
    if len(by_machine) < 2:
        return []
    return ["", "These cells ran on different machines; **s/epoch** and **peak memory** compare only within one:",
            *(f"- {machine}: {', '.join(models)}" for machine, models in sorted(by_machine.items()))]


def _failure_notes(rows):
    notes = []
    for row in rows:
        for cell in row["failed"]:
            error = cell.get("error", "").splitlines()[0] if cell.get("error") else "unknown error"
            notes.append(f"- {cell['model']}, seed {cell['seed']}: {error} (log: `{cell.get('log', '?')}`)")
    return ["", "Failed cells (rerun the same command to retry them):", *notes] if notes else []


def readme(bench, out, sections):
    """The results folder's README: the command, the machine, every dataset's table and plot."""
    lines = [f"# Benchmark `{bench.name}`", ""]
    if bench.description:
        lines += [bench.description.strip(), ""]
    lines += [
        "Made by (from the project root):",
        "",
        "```bash",
        f"python -m recbole_mmm4rec.benchmark {_shown_path(bench.path)}"
        + ("" if Path(out).resolve() == bench.default_out.resolve() else f" --out {_shown_path(out)}"),
        "```",
        "",
        f"Models: {', '.join(bench.models)}. Seeds: {', '.join(map(str, bench.seeds))}. "
        f"Per-cell records (every metric, every epoch): `cells/<dataset>/<model>/seed<seed>.json`.",
    ]
    machines = _machines(bench, out)
    if machines:
        lines += ["", "Measured on: " + "; ".join(machines) + "."]
    for dataset, section in sections.items():
        lines += ["", f"## {dataset}", "", f"Files: [{dataset}.md]({dataset}.md), [{dataset}.csv]({dataset}.csv), "
                  f"[{dataset}_valid_ndcg.png]({dataset}_valid_ndcg.png)", "", section.rstrip()]
    return "\n".join(lines) + "\n"


def _shown_path(path):
    path = Path(path).resolve()
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def _machines(bench, out):
    seen = set()
    for model, dataset, seed in bench.cells():
        cell = read_cell(cell_file(out, model, dataset, seed))
        env = (cell or {}).get("environment")
        if env:
            seen.add(f"{_machine(cell)}, {env['torch_threads']} torch threads, Python {env['python']}, "
                     f"torch {env['torch']}, RecBole {env['recbole']}")
    return sorted(seen)


# --- CSV ------------------------------------------------------------------------------------------------

def write_csv(path, rows, reference):
    """One row per model (then the paper's rows): every test metric's mean and std, and the other columns."""
    extra = sorted({m for r in rows for m in r.get("metrics", []) if m not in TABLE_METRICS}, key=_metric_order)
    metric_columns = [f"{m}_{s}" for m in (*TABLE_METRICS, *extra) for s in ("mean", "std")]
    columns = ["model", "source", "seeds_done", "seeds", *metric_columns, "best_epoch", "epochs_run",
               "train_seconds_per_epoch", "fit_seconds_per_epoch", "parameters", "peak_memory_mib",
               "peak_memory_kind", "failed_seeds"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row in rows:
            record = {k: row.get(k) for k in columns if k in row and not isinstance(row[k], (tuple, list))}
            for metric in (*TABLE_METRICS, *extra):
                if metric in row:
                    record[f"{metric}_mean"], record[f"{metric}_std"] = row[metric]
            record.update(source="measured", failed_seeds=" ".join(str(c["seed"]) for c in row["failed"]))
            writer.writerow({k: round(v, 6) if isinstance(v, float) else v for k, v in record.items()})
        for label, figures in (reference or {}).get("models", {}).items():
            writer.writerow({"model": label, "source": "paper", **{f"{m}_mean": v for m, v in figures.items()}})


# --- plot -----------------------------------------------------------------------------------------------

def plot_valid(path, dataset, rows):
    """Validation NDCG@10 (the valid_metric) per epoch, one line per model: the mean over the seeds that ran
    that epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    metric = "/".join(sorted({_pretty(r["valid_metric"]) for r in rows if r["curves"]})) or "NDCG@10"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        curve = _mean_curve(row["curves"])
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=row["model"])
    ax.set(xlabel="epoch", ylabel=f"validation {metric} (mean over seeds)", title=f"{dataset}: validation {metric}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _pretty(metric):
    name, _, k = metric.partition("@")
    name = {"ndcg": "NDCG", "mrr": "MRR", "recall": "Recall", "hit": "Hit"}.get(name, name)
    return f"{name}@{k}" if k else name


def _mean_curve(curves):
    longest = max((len(c) for c in curves), default=0)
    return [statistics.mean(c[i] for c in curves if len(c) > i) for i in range(longest)]
