"""Epoch-level resume (recbole_mmm4rec/resume.py through run(resume_file=...)): a run interrupted after an
epoch and started again equals the uninterrupted run, for our trainer (MMM4Rec, dropout on) and RecBole's
(SASRec); a finished run is not trained again; a broken resume file is named."""

import pytest

import recbole_mmm4rec
from conftest import TINY, interrupted_at

SASREC = {"hidden_size": 16, "inner_size": 16, "n_layers": 1, "n_heads": 1}
MODELS = {"MMM4Rec": {}, "SASRec": SASREC}
EPOCHS = {"epochs": 3, "stopping_step": 10}


def settings(model, tmp_path):
    base = {k: TINY[k] for k in ("train_batch_size", "show_progress", "state", "seed")}
    extra = dict(TINY) if model == "MMM4Rec" else {}
    return {**extra, **base, **MODELS[model], **EPOCHS, "checkpoint_dir": str(tmp_path / "saved")}


@pytest.mark.parametrize("model", MODELS)
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(model, tmp_path, monkeypatch):
    whole = recbole_mmm4rec.run(model, "scientific_mm", config_dict=settings(model, tmp_path / "a"))
    resume_file = str(tmp_path / "b" / "resume.pth")
    with monkeypatch.context() as patch:
        interrupted_at(2, patch)
        with pytest.raises(KeyboardInterrupt):
            recbole_mmm4rec.run(model, "scientific_mm", config_dict=settings(model, tmp_path / "b"),
                                resume_file=resume_file)
    resumed = recbole_mmm4rec.run(model, "scientific_mm", config_dict=settings(model, tmp_path / "b"),
                                  resume_file=resume_file)
    assert whole["resumed_after_epoch"] is None and resumed["resumed_after_epoch"] == 1
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert [h["valid"] for h in resumed["history"]] == [h["valid"] for h in whole["history"]]
    assert resumed["test_result"] == whole["test_result"]
    assert resumed["epochs"] == whole["epochs"] == 3

    again = recbole_mmm4rec.run(model, "scientific_mm", config_dict=settings(model, tmp_path / "b"),
                                resume_file=resume_file)  # finished: the test of its best epoch, no training
    assert again["resumed_after_epoch"] == 2 and again["history"] == resumed["history"]
    assert again["test_result"] == whole["test_result"]


def test_a_broken_resume_file_is_named(tmp_path):
    resume_file = tmp_path / "resume.pth"
    resume_file.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"resume_file {resume_file} cannot be used"):
        recbole_mmm4rec.run("SASRec", "scientific_mm", config_dict=settings("SASRec", tmp_path),
                            resume_file=str(resume_file))
