"""Transfer reports: a whole study from one spec file, or one pre-trained-vs-scratch comparison.

    python -m recbole_mmm4rec.transfer_report reports/transfer.yaml [--out DIR] [--report-only] [--jobs N]

runs a transfer study (``recbole_mmm4rec/benchmark/transfer.py``): pre-trains the spec's encoders, trains its
fine-tuning / from-scratch / zero-shot rows over targets × seeds (the benchmark runner: resumable cell by cell)
and writes the transfer report into ``DIR`` (default: ``reports/<spec name>/`` next to the spec).

    python -m recbole_mmm4rec.transfer_report --dataset=office --pretrained=PATH/best.pth \\
        [--config_files="a.yaml"] [--out=reports/transfer-office] [--key=value ...]

compares one fine-tuning run from a pre-trained encoder with one from scratch: same configuration, seed and
split (RecBole's full-ranking evaluation), only the encoder's starting point differs. Writes ``report.md``
(epochs to the best validation NDCG@10, seconds per epoch, best test metrics), ``valid_ndcg.png`` and
``report.json`` (every epoch of both runs) to ``--out``.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from recbole_mmm4rec.quick_start import run

TEST_COLUMNS = ("recall@10", "recall@50", "ndcg@10", "ndcg@50")


def summarise(result, metric="ndcg@10"):
    """Epochs to the best validation ``metric``, mean training seconds per epoch, test metrics."""
    history = result["history"]
    curve = [h["valid"][metric] for h in history if "valid" in h]
    best = max(range(len(curve)), key=curve.__getitem__)
    return {
        "epochs_run": len(history),
        "epochs_to_best": best + 1,
        "best_valid": curve[best],
        "seconds_per_epoch": sum(h["train_seconds"] for h in history) / len(history),
        "test": {k: float(result["test_result"][k]) for k in TEST_COLUMNS},
        "curve": curve,
    }


def markdown(summaries, dataset, pretrained):
    lines = [
        f"# Transfer to `{dataset}`: pre-trained vs from scratch",
        "",
        f"Pre-trained encoder: `{pretrained}`. Same configuration, seed and split for both runs; "
        "validation NDCG@10 selects the epoch; test metrics of that epoch (full ranking).",
        "",
        "| run | epochs to best valid NDCG@10 | epochs run | s/epoch (train) | valid NDCG@10 after 1 epoch | "
        "best valid NDCG@10 | " + " | ".join(f"test {c.replace('recall', 'R').replace('ndcg', 'N')}" for c in TEST_COLUMNS)
        + " |",
        "|---" * (6 + len(TEST_COLUMNS)) + "|",
    ]
    for label, s in summaries.items():
        lines.append(
            f"| {label} | {s['epochs_to_best']} | {s['epochs_run']} | {s['seconds_per_epoch']:.2f} | "
            f"{s['curve'][0]:.4f} | {s['best_valid']:.4f} | "
            + " | ".join(f"{s['test'][c]:.4f}" for c in TEST_COLUMNS) + " |"
        )
    return "\n".join(lines) + "\n\n![validation NDCG@10 per epoch](valid_ndcg.png)\n"


def plot(summaries, dataset, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, s in summaries.items():
        ax.plot(range(1, len(s["curve"]) + 1), s["curve"], marker="o", markersize=3, label=label)
    ax.set(xlabel="epoch", ylabel="validation NDCG@10", title=f"MMM4Rec on {dataset}: transfer vs scratch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", nargs="?", help="a transfer study's spec file (e.g. reports/transfer.yaml)")
    parser.add_argument("--report-only", action="store_true", help="spec: only rewrite the report from finished runs")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="spec: fine-tuning cells run at once")
    parser.add_argument("--encoder", nargs=2, metavar=("LABEL", "TARGET"),
                        help="spec: pre-train one encoder here (what the study starts for each)")
    parser.add_argument("--dataset", help="one comparison: the target dataset")
    parser.add_argument("--pretrained", help="one comparison: a --stage=pretrain checkpoint (best.pth)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    parser.add_argument("--out", default=None, help="report folder (default reports/<spec name> or "
                                                    "reports/transfer-<dataset>)")
    args, overrides = parser.parse_known_args(argv)
    if args.spec and args.spec.startswith("-"):  # argparse takes an unknown "--key=a b" (with a space) as positional
        overrides, args.spec = [args.spec, *overrides], None
    if args.spec:
        return study(parser, args, overrides)
    if not args.dataset or not args.pretrained:
        parser.error("give a spec file, or --dataset and --pretrained for one comparison")
    if not os.path.isfile(args.pretrained):
        parser.error(f"--pretrained: no checkpoint at {args.pretrained}")
    sys.argv = [sys.argv[0], *overrides]  # RecBole's Config reads the --key=value overrides from here
    files = args.config_files.split() if args.config_files else None
    out = args.out or os.path.join("reports", f"transfer-{args.dataset}")

    summaries = {}
    for label, pretrained in (("pre-trained", args.pretrained), ("from scratch", None)):
        result = run("MMM4Rec", args.dataset, files, config_dict={"pretrained": pretrained}, saved=True)
        summaries[label] = summarise(result)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump({"dataset": args.dataset, "pretrained": args.pretrained, "overrides": overrides,
                   "config_files": files, "runs": summaries}, f, indent=1)
    render(out)
    return summaries


def study(parser, args, overrides):
    """A transfer study from its spec: encoders, then cells, then the report (see ``benchmark/transfer.py``)."""
    from recbole_mmm4rec.benchmark import SpecError, load
    from recbole_mmm4rec.benchmark.__main__ import run_all
    from recbole_mmm4rec.benchmark.report import write_reports
    from recbole_mmm4rec.benchmark.transfer import pretrain_encoders, pretrain_one, write_transfer_report

    if overrides:
        parser.error(f"with a spec file every setting is in the file; unknown arguments {' '.join(overrides)}")
    try:
        bench = load(args.spec)
    except SpecError as error:
        parser.error(str(error))
    if args.encoder:
        label, target = args.encoder
        if (label, target) not in [(l, t) for l in bench.pretrain or {} for t in bench.pretrain[l]["corpus"]]:
            parser.error(f"--encoder {label} {target}: not an encoder of {bench.path}")
        pretrain_one(bench, label, target)
        return 0
    out = Path(args.out) if args.out else bench.path.parent / bench.name
    failed = 0
    if not args.report_only:
        failed = pretrain_encoders(bench) + run_all(bench, out, jobs=args.jobs)
    for path in write_reports(bench, out) + write_transfer_report(bench, out):
        print(f"written: {path}")
    return 1 if failed else 0


def render(out):
    """``report.md`` and ``valid_ndcg.png`` from ``report.json`` in the folder ``out``."""
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    text = markdown(report["runs"], report["dataset"], report["pretrained"])
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    plot(report["runs"], report["dataset"], os.path.join(out, "valid_ndcg.png"))
    print(text)
    print(f"written to {out}/")


if __name__ == "__main__":
    status = main()
    sys.exit(status if isinstance(status, int) else 0)  # one comparison returns its summaries
