"""python -m recbole_mmm4rec.benchmark benchmarks/<name>.yaml [--force] [--report-only] [--out DIR] [--jobs N]

Runs every (model, dataset, seed) cell of the benchmark file that is not finished yet, each in a fresh
process, then writes the tables, CSVs, plots and README (see ``recbole_mmm4rec/benchmark/__init__.py``).
``--jobs N`` runs N cells at once (worth it on a GPU, which one small model leaves mostly idle; each cell
records N, since sharing the machine slows every cell's seconds per epoch).
``--cell MODEL DATASET SEED`` runs one cell in this process (what the runner starts for each cell).
"""

import argparse
import sys
from collections import Counter
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recbole_mmm4rec import distributed
from recbole_mmm4rec.benchmark.cells import (CellBusy, cell_file, cell_lock, is_finished, log_file, read_cell,
                                             run_in_subprocess, train_cell)
from recbole_mmm4rec.benchmark.report import write_reports
from recbole_mmm4rec.benchmark.spec import SpecError, load


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m recbole_mmm4rec.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="the benchmark file, e.g. benchmarks/scientific_mm.yaml")
    parser.add_argument("--out", help="results folder (default: results/<name>/ next to the benchmark file)")
    parser.add_argument("--force", action="store_true", help="redo finished cells too")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the tables from finished cells")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="cells run at once (default 1)")
    parser.add_argument("--cell", nargs=3, metavar=("MODEL", "DATASET", "SEED"), help="run one cell here")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")

    try:
        bench = load(args.spec)
    except SpecError as error:
        parser.error(str(error))
    out = Path(args.out) if args.out else bench.default_out
    if args.cell:
        return run_one_cell(parser, bench, out, *args.cell, jobs=args.jobs)
    if distributed.launched():
        parser.error("under torchrun, train one cell: --cell MODEL DATASET SEED (the runner starts every cell "
                     "as a process of its own)")
    failed = 0 if args.report_only else run_all(bench, out, force=args.force, jobs=args.jobs)
    for path in write_reports(bench, out):
        print(f"written: {path}")
    return 1 if failed else 0


def run_all(bench, out, force=False, jobs=1):
    """Run the cells that are not finished (all of them with ``force``), ``jobs`` at a time; returns the
    number that failed."""
    cells = bench.cells()
    print(f"benchmark {bench.name}: {len(bench.models)} models × {len(bench.datasets)} datasets × "
          f"{len(bench.seeds)} seeds = {len(cells)} cells, results in {out}/"
          + (f", {jobs} at once" if jobs > 1 else ""), flush=True)
    counts, todo = Counter(), []
    for i, (model, dataset, seed) in enumerate(cells, 1):
        label = f"[{i:>{len(str(len(cells)))}}/{len(cells)}] {model} on {dataset}, seed {seed}"
        previous = read_cell(cell_file(out, model, dataset, seed))
        if not force and is_finished(previous, bench.settings(model, dataset, seed)):
            print(f"{label}: skipped, finished {previous.get('finished_at', '')} (--force redoes it)", flush=True)
            counts["skipped"] += 1
        else:
            todo.append((label, model, dataset, seed, _why_run(previous, force)))

    def run(label, model, dataset, seed, why):
        print(f"{label}: {why} (log: {log_file(out, model, dataset, seed)})", flush=True)
        try:
            record = run_in_subprocess(bench, out, model, dataset, seed, jobs=jobs, label=label)
        except CellBusy as busy:
            print(f"{label}: not started: {busy}", flush=True)
            return "busy"
        print(f"{label}: {_outcome(record)}", flush=True)
        return record["status"]

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each thread only waits on its cell's process
        counts.update(pool.map(lambda cell: run(*cell), todo))
    print(f"{counts['ok']} cells trained, {counts['skipped']} skipped (finished before), {counts['failed']} failed"
          + (f", {counts['busy']} running in another process" if counts["busy"] else ""), flush=True)
    return counts["failed"]


def run_one_cell(parser, bench, out, model, dataset, seed, jobs=1):
    if model not in bench.models or dataset not in bench.datasets or not seed.lstrip("-").isdigit() \
            or int(seed) not in bench.seeds:
        parser.error(f"--cell {model} {dataset} {seed}: not a cell of {bench.path} "
                     f"(models {list(bench.models)}, datasets {list(bench.datasets)}, seeds {list(bench.seeds)})")
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value overrides from the command line: none here
    try:
        with cell_lock(out, model, dataset, int(seed)) if distributed.is_main() else nullcontext():  # torchrun
            record = train_cell(bench, out, model, dataset, int(seed), cells_at_once=jobs)
    except CellBusy as busy:
        print(f"cell not started: {busy}")
        return 1
    print(f"cell {model} on {dataset}, seed {seed}: {_outcome(record)}")
    return 0 if record["status"] == "ok" else 1


def _why_run(previous, force):
    if previous is None:
        return "training"
    if force:
        return "training again (--force)"
    if previous.get("status") == "failed":
        return "training again (failed before)"
    return "training again (its settings in the benchmark file changed)"


def _outcome(record):
    if record["status"] != "ok":
        return f"FAILED: {record.get('error', '').splitlines()[0] if record.get('error') else 'unknown error'}"
    test = record["test"]
    wall = f" in {record['wall_seconds']:.0f}s" if "wall_seconds" in record else ""
    return (f"done{wall}: {record['epochs_run']} epochs (best {record['best_epoch']}), "
            f"test R@10 {test.get('recall@10', float('nan')):.4f} N@10 {test.get('ndcg@10', float('nan')):.4f}, "
            f"{record['train_seconds_per_epoch']:.2f} s/epoch, {record['parameters']:,} parameters, "
            f"peak {record['peak_memory_mib']:,.0f} MiB {record['peak_memory_kind']}")


if __name__ == "__main__":
    sys.exit(main())
