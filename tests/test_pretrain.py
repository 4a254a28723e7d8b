"""Pre-training on several domains and transfer to a new one (DESIGN.md §3, §6)."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import recbole_mmm4rec
from conftest import TINY, build_model, make_config, split_scientific_mm
from recbole_mmm4rec.quick_start import PROJECT_ROOT
from recbole_mmm4rec.fine_tuning import load_pretrained



@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """Two small real domains: disjoint halves of 800 scientific_mm users, each with the feature file."""
    return split_scientific_mm(tmp_path_factory.mktemp("domains"), ("sci_a", "sci_b"), 400)


def _settings(domains, checkpoint_dir, **overrides):
    return {**TINY, "data_path": domains, "checkpoint_dir": str(checkpoint_dir), "train_batch_size": 128,
            "feature_dims": {"text": 512, "image": 512}, "learning_rate": 0.003, **overrides}


@pytest.fixture(scope="module")
def pretrained(domains, tmp_path_factory):
    """Two epochs on sci_a + sci_b, uninterrupted: (history, run folder)."""
    folder = tmp_path_factory.mktemp("pretrain")
    return recbole_mmm4rec.pretrain(["sci_a", "sci_b"], config_dict=_settings(domains, folder, epochs=2))


def test_pretraining_on_two_domains_lowers_the_loss(pretrained):
    history, run_dir = pretrained
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[1]["loss"] < history[0]["loss"]
    assert set(history[1]["valid"]) == {"sci_a", "sci_b"}
    assert sorted(os.listdir(run_dir)) == ["best.pth", "last.pth"]
    state = torch.load(os.path.join(run_dir, "last.pth"))  # torch's weights_only default
    assert state["datasets"] == ["sci_a", "sci_b"] and state["epoch"] == 2
    # each domain keeps its own item-modality bias, trained
    biases = [state["item_tables"][d]["text.bias.weight"] for d in ("sci_a", "sci_b")]
    assert all(b.abs().sum() > 0 for b in biases) and not torch.equal(*biases)


def test_resume_after_interruption_gives_the_uninterrupted_result(pretrained, domains, tmp_path):
    recbole_mmm4rec.pretrain(["sci_a", "sci_b"], config_dict=_settings(domains, tmp_path, epochs=1))  # "crash"
    history, run_dir = recbole_mmm4rec.pretrain(
        ["sci_a", "sci_b"], config_dict=_settings(domains, tmp_path, epochs=2), resume=True
    )
    assert [h["epoch"] for h in history] == [0, 1]
    resumed = torch.load(os.path.join(run_dir, "last.pth"))["encoder"]
    uninterrupted = torch.load(os.path.join(pretrained[1], "last.pth"))["encoder"]
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_in_batch_loss_equals_hand_computed_cross_entropy(scientific):
    config, dataset, train = scientific[0], scientific[1], scientific[2]
    model = build_model(config, dataset)  # eval mode: no dropout
    batch = next(iter(train))[:6]
    targets = batch["item_id"].clone()
    targets[3] = targets[0]  # a duplicate target
    batch["item_id"] = targets
    with torch.no_grad():
        user = model.forward(batch["item_id_list"], batch["item_length"], batch["timestamp_list"])
        text, image = model.encoder.item_embeddings(model.encoder.adapted_items(model.items), targets)
        logits = (user @ text.T + user @ image.T) / config["temperature"]  # [6, 6]
        expected = []
        for i in range(6):
            # candidates: own target, and every other column whose item differs
            keep = [j for j in range(6) if j == i or targets[j] != targets[i]]
            expected.append(-F.log_softmax(logits[i, keep], dim=0)[keep.index(i)])
        assert torch.allclose(model.calculate_in_batch_loss(batch), torch.stack(expected).mean(), atol=1e-6)


@pytest.mark.parametrize("with_id", [True, False])
def test_fine_tuning_starts_from_the_pretrained_encoder(pretrained, scientific, tiny_dict, caplog, with_id):
    best = os.path.join(pretrained[1], "best.pth")
    model = build_model(make_config(tiny_dict, item_modality_bias=with_id), scientific[1], seed=123)
    with caplog.at_level("INFO"):
        load_pretrained(model, best)
    saved = torch.load(best)["encoder"]
    assert all(torch.equal(v, saved[k]) for k, v in model.encoder.state_dict().items())  # bit-identical
    if with_id:  # the new domain's item-modality bias starts fresh (zero)
        assert torch.count_nonzero(model.items["text"].bias.weight) == 0
        assert "items.text.bias.weight" in caplog.text
    else:
        assert "without-ID" in caplog.text


def test_two_pretrained_layers_fine_tune_one(pretrained, scientific, tiny_dict, caplog):
    """The paper's setting: pre-training has 2 layers (properties/pretrain/MMM4Rec.yaml), fine-tuning 1,
    which gets layer 0 and everything outside the layers; the log says which layers were left out."""
    best = os.path.join(pretrained[1], "best.pth")
    saved = torch.load(best)["encoder"]
    assert {k.split(".")[1] for k in saved if k.startswith("layers.")} == {"0", "1"}
    model = build_model(make_config(tiny_dict, num_layers=1), scientific[1], seed=7)
    with caplog.at_level("INFO"):
        load_pretrained(model, best)
    loaded = model.encoder.state_dict()
    assert not any(k.startswith("layers.1.") for k in loaded)
    assert all(torch.equal(v, saved[k]) for k, v in loaded.items())
    assert "layers 0-0 loaded, layers 1 left out" in caplog.text


def test_a_fine_tuned_recbole_checkpoint_also_transfers(scientific, tiny_dict, tmp_path):
    source = build_model(make_config(tiny_dict), scientific[1], seed=1)
    path = tmp_path / "MMM4Rec-trained-elsewhere.pth"
    torch.save({"config": scientific[0], "epoch": 4, "state_dict": source.state_dict()}, path)
    target = build_model(make_config(tiny_dict), scientific[1], seed=2)
    load_pretrained(target, str(path))
    assert all(torch.equal(v, source.encoder.state_dict()[k]) for k, v in target.encoder.state_dict().items())
    assert torch.count_nonzero(target.items["text"].bias.weight) == 0


def test_mismatched_checkpoint_names_the_tensors(pretrained, scientific, tiny_dict, tmp_path):
    wider = build_model(make_config(tiny_dict, hidden_size=48, inner_size=48), scientific[1])
    with pytest.raises(ValueError, match=r"adapters\.text\.linear\.weight: checkpoint \(32, 512\) vs model \(48, 512\)"):
        load_pretrained(wider, os.path.join(pretrained[1], "best.pth"))
    deeper = build_model(make_config(tiny_dict, num_layers=3), scientific[1])  # the checkpoint has 2
    with pytest.raises(ValueError, match=r"layers\.2\.tissd\.in_proj\.weight: missing from the checkpoint"):
        load_pretrained(deeper, os.path.join(pretrained[1], "best.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth is not a readable checkpoint"):
        load_pretrained(wider, str(corrupt))


def test_cli_pretrains_then_fine_tunes(domains, tmp_path):
    flags = ["--hidden_size=32", "--inner_size=32", "--head_dim=16", "--n_groups=2", "--d_state=8",
             "--show_progress=False", f"--data_path={domains}", f"--checkpoint_dir={tmp_path}",
             "--feature_dims={'text': 512, 'image': 512}", "--epochs=1"]
    script = str(PROJECT_ROOT / "run_recbole.py")
    done = subprocess.run([sys.executable, script, "--model=MMM4Rec", "--stage=pretrain", "--dataset=sci_a",
                           *flags], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    best = tmp_path / "MMM4Rec-pretrain-sci_a" / "best.pth"
    done = subprocess.run([sys.executable, script, "--model=MMM4Rec", "--dataset=sci_b", f"--pretrained={best}",
                           *flags], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "encoder tensors loaded from" in log and "test result" in log


def test_transfer_report_writes_table_json_and_plot(pretrained, domains, tmp_path, monkeypatch):
    from recbole_mmm4rec import transfer_report

    monkeypatch.setattr(sys, "argv", ["transfer_report"])  # main() hands the overrides to RecBole through it
    best = os.path.join(pretrained[1], "best.pth")
    flags = [f"--{k}={v}" for k, v in TINY.items()] + [
        f"--data_path={domains}", f"--checkpoint_dir={tmp_path / 'ck'}", "--epochs=2",
        "--feature_dims={'text': 512, 'image': 512}",
    ]
    summaries = transfer_report.main(["--dataset=sci_b", f"--pretrained={best}", f"--out={tmp_path / 'report'}", *flags])
    assert set(summaries) == {"pre-trained", "from scratch"}
    for s in summaries.values():
        assert s["epochs_run"] == 2 and 1 <= s["epochs_to_best"] <= 2 and len(s["curve"]) == 2
        assert 0 < s["test"]["ndcg@10"] <= s["test"]["recall@10"] <= 1
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| pre-trained | " in report and "| from scratch | " in report
    assert (tmp_path / "report" / "valid_ndcg.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summaries["pre-trained"]["curve"] != summaries["from scratch"]["curve"]


def test_epochs_0_evaluates_the_pretrained_encoder_zero_shot(pretrained, domains, tmp_path):
    """epochs: 0 trains nothing: the pre-trained encoder is scored on the target as it is, above the
    untrained model (which already ranks by text similarity: 0.063 here, vs 0.081 pre-trained)."""
    settings = _settings(domains, tmp_path, epochs=0, item_modality_bias=False)
    zero_shot = recbole_mmm4rec.run("MMM4Rec", "sci_b", config_dict={
        **settings, "pretrained": os.path.join(pretrained[1], "best.pth")})
    untrained = recbole_mmm4rec.run("MMM4Rec", "sci_b", config_dict=settings)
    assert zero_shot["history"] == [] and zero_shot["epochs"] == 0 and zero_shot["saved_model_file"] is None
    assert zero_shot["best_valid_result"]["ndcg@10"] > 0
    assert zero_shot["test_result"]["ndcg@10"] > 1.15 * untrained["test_result"]["ndcg@10"]
