"""UniSRec: whitening + MoE adapter by hand, both settings train and rank, pre-training and fine-tuning."""

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from recbole.data import create_dataset, data_preparation

import recbole_mmm4rec
from conftest import TINY, fit_steps, split_scientific_mm
from recbole_mmm4rec.models.unisrec import MoEAdapter, UniSRec, item_drop
from recbole_mmm4rec.fine_tuning import load_pretrained

SMALL = {**{k: TINY[k] for k in ("show_progress", "state", "seed")}, "hidden_size": 16, "inner_size": 32,
         "n_layers": 1, "n_exps": 2, "train_batch_size": 256}
LOAD = {"load_col": {"inter": ["user_id", "item_id", "timestamp"]}}  # the tiny domains have no dataset yaml


@pytest.fixture(scope="module")
def data():
    config = recbole_mmm4rec.build_config("UniSRec", "scientific_mm", config_dict=SMALL)
    dataset = create_dataset(config)
    return config, dataset, *data_preparation(config, dataset)


def build(data, seed=0, **settings):
    """A UniSRec on the shared dataset with some config values changed for this model only."""
    config, dataset = data[0], data[1]
    saved = {key: config[key] for key in settings}
    try:
        for key, value in settings.items():
            config[key] = value
        torch.manual_seed(seed)
        return UniSRec(config, dataset)
    finally:
        for key, value in saved.items():
            config[key] = value


def test_whitening_and_moe_adapter_match_a_hand_computation():
    x = torch.tensor([[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]])  # 2 items, d = 3
    b = [torch.tensor([0.1, -0.2, 0.3]), torch.tensor([1.0, 0.0, -1.0])]
    W = [torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([[0.5, -1.0], [2.0, 0.0], [0.0, 0.5]])]
    W_gate = torch.tensor([[0.2, -0.1], [0.0, 0.3], [0.1, 0.1]])
    W_noise = torch.tensor([[0.3, 0.0], [-0.2, 0.1], [0.0, 0.4]])
    adapter = MoEAdapter(3, 2, n_experts=2, dropout_prob=0.0).eval()
    with torch.no_grad():
        for expert, b_k, W_k in zip(adapter.experts, b, W):
            expert.shift.copy_(b_k)
            expert.projection.weight.copy_(W_k.T)  # nn.Linear stores W^T
        adapter.gate.copy_(W_gate)
        adapter.noise.copy_(W_noise)

        # parametric whitening (x - b) W; item 0, expert 0: [0.9, 2.2, -1.3] W_0 = [0.9 - 1.3, 2.2 - 1.3]
        assert torch.allclose(adapter.experts[0](x[0]), torch.tensor([-0.4, 0.9]))
        for expert, b_k, W_k in zip(adapter.experts, b, W):
            assert torch.allclose(expert(x), (x - b_k) @ W_k)

        # MoE: v = sum_k g_k (x - b_k) W_k, g = softmax(x W_gate) in evaluation
        g = torch.exp(x @ W_gate) / torch.exp(x @ W_gate).sum(dim=1, keepdim=True)  # [2, G]
        v = g[:, :1] * ((x - b[0]) @ W[0]) + g[:, 1:] * ((x - b[1]) @ W[1])
        assert torch.allclose(adapter(x), v, atol=1e-6)

        # training: noisy gate softmax(x W_gate + eps * (softplus(x W_noise) + 0.01)), eps ~ N(0, 1)
        adapter.train()
        torch.manual_seed(7)
        eps = torch.randn(2, 2)
        noisy = x @ W_gate + eps * (torch.log1p(torch.exp(x @ W_noise)) + 0.01)
        torch.manual_seed(7)
        assert torch.allclose(adapter.gates(x), torch.softmax(noisy, dim=1), atol=1e-6)


def test_item_embeddings_equal_the_adapter_per_position_in_evaluation(data):
    """The adapter runs once per distinct item; without noise and dropout that is the per-position result."""
    model = build(data, train_stage="transductive_ft").eval()
    items = torch.tensor([[3, 7, 3, 0], [7, 7, 1, 0]])
    with torch.no_grad():
        per_position = model.encoder.adapter(model.items.features[items]) + model.items.bias(items)
        assert torch.allclose(model.item_embeddings(items), per_position, atol=1e-6)


def test_item_drop_keeps_an_ordered_left_aligned_subsequence():
    torch.manual_seed(0)
    seq = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 0, 0, 0, 0], [7, 8, 9, 10, 11, 12]])
    length = torch.tensor([4, 2, 6])
    aug, aug_length = item_drop(seq, length, 0.5)
    for row, n, new, m in zip(seq.tolist(), length.tolist(), aug.tolist(), aug_length.tolist()):
        kept = new[:m]
        assert 1 <= m <= n and kept[0] == row[0] and all(i != 0 for i in kept) and set(new[m:]) <= {0}
        assert kept == [i for i in row[:n] if i in kept]  # the original order
    assert torch.equal(item_drop(seq, length, 0.0)[0], seq)


@pytest.mark.parametrize("stage", ["inductive_ft", "transductive_ft"])
def test_trains_and_ranks_all_items(data, stage):
    _, dataset, train, _, test = data
    model = build(data, train_stage=stage)
    assert (model.items.bias is not None) == (stage == "transductive_ft")
    batch = next(iter(train))
    losses = fit_steps(model, batch, steps=15, lr=1e-2)
    assert losses[-1] < 0.9 * losses[0]
    model.eval()
    interaction = next(iter(test))[0][:8]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        assert scores.shape == (8, dataset.item_num) and torch.isfinite(scores).all()
        assert scores.abs().max() <= 1 / model.temperature + 1e-4  # cosine / tau
        gathered = scores.gather(1, interaction["item_id"].unsqueeze(1)).squeeze(1)
        assert torch.allclose(model.predict(interaction), gathered, atol=1e-5)


def test_items_without_text_are_an_error(data):
    features, present = data[1].item_features["text"]
    lacking = copy.copy(data[1])
    lacking.item_features = {"text": (features, present.clone().index_fill_(0, torch.tensor([3, 5]), False))}
    with pytest.raises(ValueError, match="UniSRec: 2 items have no text features"):
        UniSRec(data[0], lacking)


def test_pretraining_losses_are_in_batch_and_weighted_by_lambda(data):
    batch = next(iter(data[2]))[:6]
    targets = batch["item_id"].clone()
    targets[3] = targets[0]  # a shared next item: not a negative for each other
    batch["item_id"] = targets
    model = build(data, train_stage="pretrain").eval()
    with torch.no_grad():
        torch.manual_seed(1)
        seq_item, seq_seq = model.pretraining_losses(batch)
        assert torch.isfinite(seq_item) and torch.isfinite(seq_seq) and seq_item > 0 and seq_seq > 0
        s = model.forward(batch["item_id_list"], batch["item_length"])
        v = F.normalize(model.item_embeddings(targets), dim=-1)
        logits = s @ v.T / model.temperature  # [6, 6]
        expected = [
            -F.log_softmax(logits[i, keep], dim=0)[keep.index(i)]
            for i in range(6) for keep in [[j for j in range(6) if j == i or targets[j] != targets[i]]]
        ]
        assert torch.allclose(seq_item, torch.stack(expected).mean(), atol=1e-5)
        for lam in (0.0, 0.5):
            model = build(data, train_stage="pretrain", **{"lambda": lam}).eval()
            torch.manual_seed(1)
            assert torch.allclose(model.calculate_in_batch_loss(batch), seq_item + lam * seq_seq)
            torch.manual_seed(1)
            assert torch.allclose(model.calculate_loss(batch), seq_item + lam * seq_seq)  # the pretrain stage


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """Two tiny real domains: disjoint sets of 250 scientific_mm users, each with the feature file."""
    return split_scientific_mm(tmp_path_factory.mktemp("unisrec_domains"), ("uni_a", "uni_b"), 250)


@pytest.fixture(scope="module")
def pretrained(domains, tmp_path_factory):
    """One pre-training epoch on uni_a + uni_b: (history, run folder)."""
    settings = {**SMALL, **LOAD, "data_path": domains, "checkpoint_dir": str(tmp_path_factory.mktemp("pre")),
                "train_batch_size": 64, "epochs": 1}
    return recbole_mmm4rec.pretrain(["uni_a", "uni_b"], config_dict=settings, model="UniSRec")


def test_pretraining_on_two_domains_writes_a_text_only_encoder(pretrained):
    history, run_dir = pretrained
    assert run_dir.endswith("UniSRec-pretrain-uni_a+uni_b") and sorted(os.listdir(run_dir)) == ["best.pth", "last.pth"]
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["loss"]))
    assert set(history[0]["valid"]) == {"uni_a", "uni_b"}
    state = torch.load(os.path.join(run_dir, "best.pth"))
    assert state["model"] == "UniSRec" and state["model_config"]["n_exps"] == 2
    assert state["item_tables"] == {"uni_a": {}, "uni_b": {}}  # text only: no ID embeddings pre-trained


@pytest.mark.parametrize("stage", ["inductive_ft", "transductive_ft"])
def test_fine_tuning_loads_the_encoder_and_fixes_the_transformer(pretrained, data, stage, caplog):
    best = os.path.join(pretrained[1], "best.pth")
    model = build(data, seed=123, train_stage=stage, pretrained=best, fix_encoder=True)
    with caplog.at_level("INFO"):
        load_pretrained(model, best)
    saved = torch.load(best)["encoder"]
    assert all(torch.equal(v, saved[k]) for k, v in model.encoder.state_dict().items())  # bit-identical
    assert "kept fixed while fine-tuning" in caplog.text
    fixed = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert fixed and all(k.startswith(("encoder.position_embedding.", "encoder.transformer.")) for k in fixed)
    assert not any(k.startswith("encoder.adapter.") for k in fixed)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.calculate_loss(next(iter(data[2]))).backward()
    optimizer.step()
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) == (f"encoder.{k}" in fixed) for k in before)


def test_an_encoder_of_another_model_is_refused(data, tmp_path):
    path = tmp_path / "mmm4rec.pth"
    torch.save({"model": "MMM4Rec", "encoder": {"layers.0.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="holds an encoder of MMM4Rec; this model is UniSRec"):
        load_pretrained(build(data), str(path))


def test_run_trains_from_scratch_and_fine_tunes_from_pretrained(pretrained, domains, tmp_path):
    settings = {**SMALL, **LOAD, "data_path": domains, "checkpoint_dir": str(tmp_path), "epochs": 1}
    scratch = recbole_mmm4rec.run("UniSRec", "uni_b", config_dict=settings)
    tuned = recbole_mmm4rec.run("UniSRec", "uni_b", config_dict={
        **settings, "train_stage": "inductive_ft", "pretrained": os.path.join(pretrained[1], "best.pth")})
    for result in (scratch, tuned):
        test = result["test_result"]
        assert result["epochs"] == 1 and 0 <= test["ndcg@10"] <= test["recall@10"] <= 1
