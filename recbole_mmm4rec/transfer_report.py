"""Convergence report of one transfer: fine-tuning from a pre-trained encoder vs training from scratch.

    python -m recbole_mmm4rec.transfer_report --dataset=office --pretrained=PATH/best.pth \\
        [--config_files="a.yaml"] [--out=reports/transfer-office] [--key=value ...]

Both runs use the same configuration, seed and split (RecBole's full-ranking evaluation); only the
encoder's starting point differs. Writes ``report.md`` (epochs to the best validation NDCG@10, seconds
per epoch, best test metrics), ``valid_ndcg.png`` (validation NDCG@10 per epoch of both runs) and
``report.json`` (every epoch of both runs) to ``--out``.
"""

import argparse
import json
import os
import sys

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
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--pretrained", required=True, help="a --stage=pretrain checkpoint (best.pth)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    parser.add_argument("--out", default=None, help="report folder (default reports/transfer-<dataset>)")
    args, overrides = parser.parse_known_args(argv)
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
    main()
