"""The benchmark runner (python -m recbole_mmm4rec.benchmark): tables, CSV, plot, skipping finished cells,
recorded failures, the benchmark file's validation; and run()'s per-epoch history for RecBole's own trainers."""

import csv
import math
from contextlib import redirect_stdout
from io import StringIO

import pytest
import yaml

import recbole_mmm4rec
from conftest import interrupted_at
from recbole_mmm4rec.benchmark import SpecError, cells, load, report
from recbole_mmm4rec.benchmark.__main__ import main, run_all
from recbole_mmm4rec.benchmark.report import write_reports

TINY_SASREC = {"hidden_size": 16, "inner_size": 16, "n_layers": 1, "n_heads": 1}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_spec(folder, **changes):
    spec = {
        "models": ["Pop", "SASRec"],
        "seeds": [2020],
        "datasets": {"scientific_mm": {"epochs": 1, "stopping_step": 0}},
        "model_config": {"SASRec": {"config": TINY_SASREC}},
        "reference": {"scientific_mm": {"source": "a paper, another split",
                                        "models": {"SASRec": {"recall@10": 0.108, "ndcg@10": 0.0553}}}},
        **changes,
    }
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def markdown_table(text):
    """The rows of the first markdown table in ``text``, as lists of cells."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Pop and a tiny SASRec, one epoch, one seed, each cell in its own process, both at once:
    (spec, results, output)."""
    folder = tmp_path_factory.mktemp("bench")
    spec = write_spec(folder)
    output = StringIO()
    with redirect_stdout(output):
        assert main([str(spec), "--jobs", "2"]) == 0
    return spec, folder / "results" / "bench", output.getvalue()


def test_runner_writes_a_well_formed_table(finished):
    _, results, output = finished
    assert "[1/2] Pop on scientific_mm, seed 2020: done" in output
    assert "[2/2] SASRec on scientific_mm, seed 2020: done" in output
    rows = markdown_table((results / "scientific_mm.md").read_text())
    header, separator, *body = rows
    assert header[:5] == ["model", "test R@10", "test R@50", "test N@10", "test N@50"]
    assert set(separator) == {"---"} and all(len(row) == len(header) for row in body)
    assert [row[0] for row in body] == ["Pop", "SASRec", "SASRec (paper)"]
    assert body[2][1] == "0.1080" and body[2][2] == "–"
    for column in range(1, 5):  # exactly one measured row is bold per metric
        assert sum(row[column].startswith("**") for row in body[:2]) == 1
    assert body[1][-1] == "1/1" and int(body[1][8].replace(",", "")) > 1000  # seeds, parameters
    readme = (results / "README.md").read_text()
    assert "python -m recbole_mmm4rec.benchmark" in readme and "scientific_mm.csv" in readme


def test_runner_writes_csv_and_png(finished):
    _, results, _ = finished
    with open(results / "scientific_mm.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["source"]) for r in rows] == [("Pop", "measured"), ("SASRec", "measured"),
                                                         ("SASRec", "paper")]
    for row in rows[:2]:
        for metric in ("recall@10", "recall@50", "ndcg@10", "ndcg@50", "mrr@10"):
            assert 0 <= float(row[f"{metric}_mean"]) <= 1 and float(row[f"{metric}_std"]) == 0
        assert int(row["parameters"]) >= 1 and float(row["peak_memory_mib"]) > 50
        assert row["peak_memory_kind"] == "RSS" and float(row["train_seconds_per_epoch"]) > 0
    png = (results / "scientific_mm_valid_ndcg.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 5000


def test_cells_record_history_for_every_model(finished):
    _, results, _ = finished
    for model in ("Pop", "SASRec"):
        cell = cells.read_cell(results / "cells" / "scientific_mm" / model / "seed2020.json")
        assert cell["status"] == "ok" and cell["best_epoch"] == 1 and cell["epochs_run"] == 1
        assert set(cell["history"][0]) == {"epoch", "train_seconds", "loss", "valid"}
        assert cell["history"][0]["valid"]["ndcg@10"] == cell["best_valid"]["ndcg@10"]
        assert cell["settings"]["config"]["seed"] == 2020 and cell["environment"]["recbole"] == "1.2.1"
        assert cell["environment"]["cells_at_once"] == 2


def test_rerun_skips_finished_cells(finished, monkeypatch, capsys):
    spec, results, _ = finished
    cell_files = sorted((results / "cells").rglob("*.json"))
    before = {path: path.stat().st_mtime_ns for path in cell_files}

    def no_training(*args):
        raise AssertionError(f"a finished cell was run again: {args}")

    monkeypatch.setattr("recbole_mmm4rec.benchmark.__main__.run_in_subprocess", no_training)
    assert main([str(spec)]) == 0
    output = capsys.readouterr().out
    assert output.count("skipped, finished") == 2 and "0 cells trained, 2 skipped" in output
    assert {path: path.stat().st_mtime_ns for path in cell_files} == before
    assert (results / "scientific_mm.md").is_file()


def test_changed_settings_and_force_run_the_cell_again(finished, monkeypatch, capsys):
    spec, _, _ = finished
    started = []
    monkeypatch.setattr("recbole_mmm4rec.benchmark.__main__.run_in_subprocess",
                        lambda bench, out, model, dataset, seed, **_: started.append(model) or {"status": "failed",
                                                                                           "error": "not run"})
    changed = yaml.safe_load(spec.read_text())
    changed["model_config"]["SASRec"]["config"]["hidden_size"] = 8
    (spec.parent / "changed").mkdir(exist_ok=True)
    bench = load(write_spec(spec.parent / "changed", **changed))  # SASRec's settings differ, Pop's do not

    run_all(bench, spec.parent / "results" / "bench")
    assert started == ["SASRec"] and "settings in the benchmark file changed" in capsys.readouterr().out
    started.clear()
    run_all(load(spec), spec.parent / "results" / "bench", force=True)
    assert started == ["Pop", "SASRec"]


def test_a_failing_cell_is_recorded_and_reported(tmp_path, monkeypatch):
    bench = load(write_spec(tmp_path, models=["Pop", "SASRec"]))

    def broken(model, dataset, settings, partial):
        raise RuntimeError("out of patience")

    monkeypatch.setattr(cells, "_train", broken)
    record = cells.train_cell(bench, tmp_path / "out", "SASRec", "scientific_mm", 2020)
    assert record["status"] == "failed" and record["error"] == "RuntimeError: out of patience"
    assert cells.read_cell(cells.cell_file(tmp_path / "out", "SASRec", "scientific_mm", 2020)) == record
    write_reports(bench, tmp_path / "out")
    text = (tmp_path / "out" / "scientific_mm.md").read_text()
    assert "failed (1/1)" in text and "SASRec, seed 2020: RuntimeError: out of patience" in text


def test_a_killed_cell_resumes_after_its_last_epoch_and_clears_its_partial_folder(tmp_path, monkeypatch):
    bench = load(write_spec(tmp_path, models=["SASRec"],
                            datasets={"scientific_mm": {"epochs": 2, "stopping_step": 5}}))
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        interrupted_at(1, patch)  # like a kill, the cell records nothing
        with pytest.raises(KeyboardInterrupt):
            cells.train_cell(bench, out, "SASRec", "scientific_mm", 2020)
    partial = cells.partial_dir(out, "SASRec", "scientific_mm", 2020)
    assert (partial / "resume.pth").is_file() and cells.read_cell(cells.cell_file(out, "SASRec", "scientific_mm", 2020)) is None
    record = cells.train_cell(bench, out, "SASRec", "scientific_mm", 2020)
    assert record["status"] == "ok" and record["resumed_after_epoch"] == 0 and record["epochs_run"] == 2
    assert not partial.exists()


def test_best_epoch_is_the_checkpoint_recbole_tests():
    valid = [(0, 0.1), (1, 0.3), (2, 0.3), (3, 0.2)]
    assert cells._best_epoch(valid, bigger=True) == 3  # RecBole keeps the later of tied epochs
    assert cells._best_epoch(valid, bigger=False) == 1
    assert cells._best_epoch([], bigger=True) is None


@pytest.mark.parametrize("changes, field", [
    ({"modles": ["Pop"]}, "modles: unknown key"),
    ({"models": ["Pop", "NoSuchRec"]}, "models[1]: Unknown model 'NoSuchRec'"),
    ({"models": ["Pop", "Pop"]}, "models: listed twice: Pop"),
    ({"seeds": []}, "seeds: expected a non-empty list"),
    ({"datasets": {"nowhere": {"epochs": 1, "stopping_step": 0}}}, "datasets.nowhere: no dataset folder"),
    ({"datasets": {"scientific_mm": {"stopping_step": 0}}}, "datasets.scientific_mm.epochs: required"),
    ({"datasets": {"scientific_mm": {"epochs": 1}}}, "datasets.scientific_mm.stopping_step: required"),
    ({"config": {"epochs": 3}}, "config.epochs: not allowed here"),
    ({"config": {"seed": 3}}, "config.seed: not allowed here: set by the seeds list"),
    ({"model_config": {"GRU4Rec": {}}}, "model_config.GRU4Rec: 'GRU4Rec' is not in models"),
    ({"model_config": {"SASRec": {"config_files": ["nope.yaml"]}}}, "model_config.SASRec.config_files[0]: no file"),
    ({"model_config": {"SASRec": {"config": {"stopping_step": 2}}}}, "model_config.SASRec.config.stopping_step"),
    ({"reference": {"scientific_mm": {"source": "x", "models": {"A": {"hr@10": 0.1}}}}},
     "reference.scientific_mm.models.A.hr@10: unknown metric"),
    ({"reference": {"scientific_mm": {"models": {"A": {"recall@10": 0.1}}}}}, "reference.scientific_mm.source"),
    ({"variants": {"SASRec-x": {"config": {}}}}, "variants.SASRec-x.model: required"),
    ({"variants": {"GRU4Rec": {"model": "SASRec"}}}, "variants.GRU4Rec: 'GRU4Rec' is a model's name"),
    ({"variants": {"a b": {"model": "SASRec"}}}, "variants.a b: a label of letters"),
    ({"variants": {"SASRec-x": {"model": "SASRec"}}}, "variants.SASRec-x: 'SASRec-x' is not in models"),
])
def test_spec_errors_name_the_file_and_the_field(tmp_path, changes, field):
    path = write_spec(tmp_path, **changes)
    with pytest.raises(SpecError) as error:
        load(path)
    assert str(error.value).startswith(f"{path}: ") and field in str(error.value)


def test_a_variant_is_a_row_that_trains_its_model_with_its_settings(tmp_path, monkeypatch):
    path = write_spec(tmp_path, models=["SASRec", "SASRec-wide"],
                      variants={"SASRec-wide": {"model": "SASRec", "config": {**TINY_SASREC, "hidden_size": 32}}})
    bench = load(path)
    assert bench.models == ("SASRec", "SASRec-wide") and bench.model_of("SASRec-wide") == "SASRec"
    assert bench.settings("SASRec-wide", "scientific_mm", 2020)["config"]["hidden_size"] == 32
    assert bench.settings("SASRec", "scientific_mm", 2020)["config"]["hidden_size"] == 16
    trained = []
    monkeypatch.setattr(cells, "_train", lambda model, dataset, settings, partial: trained.append(model) or {})
    record = cells.train_cell(bench, tmp_path / "out", "SASRec-wide", "scientific_mm", 2020)
    assert trained == ["SASRec"] and record["model"] == "SASRec-wide"
    assert cells.cell_file(tmp_path / "out", "SASRec-wide", "scientific_mm", 2020).is_file()


def test_the_command_line_reports_a_bad_spec(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "missing.yaml")])
    assert stop.value.code == 2 and "missing.yaml: file: not found" in capsys.readouterr().err


def test_shipped_benchmark_files_are_valid():
    from recbole_mmm4rec.quick_start import PROJECT_ROOT

    for path in sorted((PROJECT_ROOT / "benchmarks").glob("*.yaml")):
        bench = load(path)
        assert bench.cells(), path


def test_run_records_history_and_parameters_for_a_recbole_builtin(tmp_path):
    config = {**TINY_SASREC, "epochs": 2, "show_progress": False, "state": "WARNING",
              "checkpoint_dir": str(tmp_path)}
    result = recbole_mmm4rec.run("SASRec", "scientific_mm", config_dict=config, saved=False)
    history = result["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    assert all(h["train_seconds"] > 0 and math.isfinite(h["loss"]) for h in history)
    assert all(0 <= h["valid"]["ndcg@10"] <= 1 for h in history)
    assert result["best_valid_result"]["ndcg@10"] == max(h["valid"]["ndcg@10"] for h in history)
    assert 1000 < result["parameters"] < 100_000 and result["valid_metric"] == "ndcg@10"


def test_our_trainer_keeps_its_history_without_a_second_wrapper():
    from recbole.trainer import Trainer

    from recbole_mmm4rec.history import EpochHistory, with_history
    from recbole_mmm4rec.trainers import NAdamTrainer

    assert with_history(NAdamTrainer) is NAdamTrainer and issubclass(NAdamTrainer, EpochHistory)
    wrapped = with_history(Trainer)
    assert issubclass(wrapped, Trainer) and with_history(wrapped) is wrapped


def test_rows_from_different_machines_are_named():
    gpu = {"environment": {"device": "NVIDIA H200", "cells_at_once": 8}}
    cpu = {"environment": {"device": "CPU (2 cores)", "cells_at_once": 1}}
    assert report._machine(gpu) == "NVIDIA H200, 8 cells at once" and report._machine(cpu) == "CPU (2 cores)"
    rows = [{"model": "SASRec", "machines": ["NVIDIA H200, 8 cells at once"]},
            {"model": "MMM4Rec", "machines": ["CPU (2 cores)"]}, {"model": "Pop", "machines": ["CPU (2 cores)"]}]
    assert report._machine_notes(rows) == [
        "", "These cells ran on different machines; **s/epoch** and **peak memory** compare only within one:",
        "- CPU (2 cores): MMM4Rec, Pop", "- NVIDIA H200, 8 cells at once: SASRec"]
    assert report._machine_notes(rows[1:]) == []  # one machine: nothing to say
