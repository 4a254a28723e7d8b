"""A whole transfer study from one spec (python -m recbole_mmm4rec.transfer_report SPEC): encoders pre-trained
and resumed, fine-tuning / from-scratch / zero-shot rows as benchmark cells, the transfer report."""

import csv
import json
import subprocess
import sys

import pytest
import yaml

from conftest import TINY, split_scientific_mm
from recbole_mmm4rec.benchmark import SpecError, load
from recbole_mmm4rec.benchmark.transfer import first_epoch_reaching, run_summary
from recbole_mmm4rec.quick_start import PROJECT_ROOT

MODEL = {**{k: v for k, v in TINY.items() if k != "seed"}, "feature_dims": {"text": 512, "image": 512}}


def write_spec(folder, data_path, **changes):
    spec = {
        "description": "tiny transfer study",
        "models": ["MMM4Rec", "MMM4Rec-pretrained", "MMM4Rec-zero-shot"],
        "seeds": [2020],
        "datasets": {"sci_b": {"epochs": 2, "stopping_step": 2, "data_path": data_path}},
        "config": {"train_batch_size": 256},
        "model_config": {"MMM4Rec": {"config": MODEL}},
        "variants": {
            "MMM4Rec-pretrained": {"model": "MMM4Rec", "pretrained": "encoder", "compare_to": "MMM4Rec",
                                   "config": MODEL},
            "MMM4Rec-zero-shot": {"model": "MMM4Rec", "pretrained": "encoder-noid",
                                  "config": {**MODEL, "epochs": 0, "item_modality_bias": False}},
        },
        "pretrain": {
            "encoder": {"model": "MMM4Rec", "corpus": {"sci_b": ["sci_a"]},
                        "config": {**MODEL, "data_path": data_path, "epochs": 2, "num_layers": 1,
                                   "train_batch_size": 128}},
            "encoder-noid": {"model": "MMM4Rec", "corpus": {"sci_b": ["sci_a"]},
                             "config": {**MODEL, "data_path": data_path, "epochs": 1, "num_layers": 1,
                                        "train_batch_size": 128, "item_modality_bias": False}},
        },
        "encoders_dir": str(folder / "encoders"),
        **changes,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    (folder / "data").mkdir()
    data_path = split_scientific_mm(folder / "data", ("sci_a", "sci_b"), 300)
    spec = write_spec(folder, data_path)
    process = subprocess.run([sys.executable, "-m", "recbole_mmm4rec.transfer_report", str(spec)],
                             capture_output=True, text=True, timeout=900, cwd=folder)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return folder, spec, process


def test_the_study_pretrains_each_encoder_and_trains_every_row(study):
    folder, spec, process = study
    bench = load(spec)
    for label in ("encoder", "encoder-noid"):
        done = json.loads((bench.encoder_dir(label, "sci_b") / "done.json").read_text())
        assert done["epochs"] == bench.pretrain[label]["config"]["epochs"]
        assert bench.encoder_checkpoint(label, "sci_b").is_file()
    cell = json.loads((folder / "study" / "cells" / "sci_b" / "MMM4Rec-pretrained" / "seed2020.json").read_text())
    assert cell["status"] == "ok" and cell["epochs_run"] == 2
    assert bench.settings("MMM4Rec-pretrained", "sci_b", 2020)["config"]["pretrained"] == str(
        bench.encoder_checkpoint("encoder", "sci_b"))  # outside the project: absolute
    assert load(PROJECT_ROOT / "reports" / "transfer.yaml").settings("MMM4Rec-pt", "office", 2020)["config"][
        "pretrained"] == "pretrained/transfer/MMM4Rec-for-office/MMM4Rec-pretrain-games+scientific/best.pth"
    zero = json.loads((folder / "study" / "cells" / "sci_b" / "MMM4Rec-zero-shot" / "seed2020.json").read_text())
    assert zero["status"] == "ok" and zero["epochs_run"] == 0 and zero["test"]["ndcg@10"] > 0


def test_the_report_has_every_row_and_its_convergence_against_scratch(study):
    folder, _, _ = study
    out = folder / "study"
    text = (out / "transfer.md").read_text()
    assert "3 of 3 planned runs are done" in text
    assert "| MMM4Rec-zero-shot (zero-shot) | sci_a (encoder-noid) | 1 | — | — | — |" in text
    rows = list(csv.DictReader((out / "transfer.csv").open()))
    assert [r["row"] for r in rows] == ["MMM4Rec", "MMM4Rec-pretrained", "MMM4Rec-zero-shot"]
    scratch, pretrained = rows[0], rows[1]
    assert pretrained["scratch_best_valid_ndcg@10"] == scratch["best_valid_ndcg@10"]
    assert scratch["epochs_to_100"] == scratch["best_epoch"] or int(scratch["epochs_to_100"]) <= int(scratch["best_epoch"])
    assert (out / "transfer_sci_b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "transfer.json").read_text())["encoders"]["encoder-for-sci_b"]["epochs"] == 2


def test_a_rerun_skips_what_is_finished(study):
    folder, spec, _ = study
    process = subprocess.run([sys.executable, "-m", "recbole_mmm4rec.transfer_report", str(spec)],
                             capture_output=True, text=True, timeout=300, cwd=folder)
    assert process.returncode == 0, process.stderr[-2000:]
    assert process.stdout.count("skipped, pre-trained before") == 2
    assert "0 cells trained, 3 skipped" in process.stdout


def test_an_interrupted_encoder_resumes_from_its_last_checkpoint(study):
    folder, spec, _ = study
    bench = load(spec)
    resumed = bench.encoder_dir("encoder", "sci_b")
    before = json.loads((resumed / "done.json").read_text())
    (resumed / "done.json").unlink()  # as if killed after its last epoch's last.pth, before done.json
    process = subprocess.run([sys.executable, "-m", "recbole_mmm4rec.transfer_report", str(spec), "--encoder",
                              "encoder", "sci_b"], capture_output=True, text=True, timeout=300, cwd=folder)
    assert process.returncode == 0, process.stderr[-2000:]
    after = json.loads((resumed / "done.json").read_text())
    assert after["history"] == before["history"]  # the epochs' timings too: read back from last.pth, not retrained


def test_first_epoch_reaching():
    assert first_epoch_reaching([0.1, 0.3, 0.2, 0.4], 0.3) == 2
    assert first_epoch_reaching([0.1, 0.2], 0.3) is None


def test_run_summary_compares_with_the_scratch_run_of_the_seed():
    def cell(curve, seed=1):
        return {"seed": seed, "epochs_run": len(curve), "best_epoch": curve.index(max(curve)) + 1, "best_valid": {},
                "history": [{"valid": {"ndcg@10": v}} for v in curve], "train_seconds_per_epoch": 2.0,
                "test": {k: 0.1 for k in ("recall@10", "recall@50", "ndcg@10", "ndcg@50")}}
    summary = run_summary(cell([0.05, 0.096, 0.1, 0.09]), cell([0.02, 0.06, 0.1, 0.08]))
    assert (summary["epochs_to_95"], summary["epochs_to_100"], summary["best_epoch"]) == (2, 3, 3)


def _bad_specs(data_path):
    return [
        ({"variants": {"MMM4Rec-pretrained": {"model": "MMM4Rec", "pretrained": "nope"}}},
         "variants.MMM4Rec-pretrained.pretrained: 'nope' is not in pretrain"),
        ({"pretrain": {"encoder": {"model": "SASRec", "corpus": {"sci_b": ["sci_a"]}}}},
         "pretrain.encoder.model: one of MMM4Rec, UniSRec"),
        ({"pretrain": {"encoder": {"model": "MMM4Rec", "corpus": {"sci_b": ["nowhere"]},
                                   "config": {"data_path": data_path}}}}, "pretrain.encoder.corpus.sci_b: no dataset"),
        ({"pretrain": {"encoder": {"model": "MMM4Rec", "corpus": {"office": ["sci_a"]},
                                   "config": {"data_path": data_path}}},
          "variants": {"MMM4Rec-pretrained": {"model": "MMM4Rec", "pretrained": "encoder"}}},
         "variants.MMM4Rec-pretrained.pretrained: encoder has no corpus for sci_b"),
        ({"variants": {"MMM4Rec-pretrained": {"model": "MMM4Rec", "compare_to": "Pop"}}},
         "variants.MMM4Rec-pretrained.compare_to: another row of models"),
        ({"variants": {"MMM4Rec-pretrained": {"model": "MMM4Rec", "compare": "MMM4Rec"}}},
         "variants.MMM4Rec-pretrained.compare: unknown key"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_a_bad_transfer_spec_names_the_field(tmp_path, case):
    for name in ("sci_a", "sci_b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    change, message = _bad_specs(str(tmp_path))[case]
    if "variants" in change:
        change["models"] = ["MMM4Rec", *change["variants"]]
    spec = write_spec(tmp_path, str(tmp_path), **change)
    with pytest.raises(SpecError, match=message):
        load(spec)
