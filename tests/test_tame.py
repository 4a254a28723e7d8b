"""TAME (models/tame.py, layers/retrieval.py) on the bundled scientific_mm: real items, text tokens (MiniLM,
up to 32 per item) and the global image vectors as 1-token sequences. Default initialisation throughout."""

import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn

import recbole_mmm4rec
from recbole_mmm4rec.data.tokens import read_tokens, token_path, write_tokens
from recbole_mmm4rec.layers.retrieval import FirstTokenMLP, QueryRetriever, TokenCrossAttention
from recbole_mmm4rec.models.tame import TAME, in_batch_infonce
from conftest import fit_steps, prepare

# Every part of the model, at a size that runs in seconds on 2 CPU cores.
TINY_TAME = {
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "text_queries": 2,
    "image_queries": 3,
    "text_heads": 2,
    "image_heads": 2,
    "train_batch_size": 128,
    "show_progress": False,
    "state": "WARNING",
    "seed": 2020,
}


def tame_config(**overrides):
    return recbole_mmm4rec.build_config("TAME", "scientific_mm", config_dict={**TINY_TAME, **overrides})


@pytest.fixture(scope="module")
def data():
    """(config, dataset, train, valid, test) built once."""
    return prepare(tame_config())


@pytest.fixture(scope="module")
def batch(data):
    """A full-sort test batch of real users."""
    return next(iter(data[4]))[0]


def build(config, dataset, seed=0):
    torch.manual_seed(seed)
    return TAME(config, dataset).eval()


@pytest.fixture(scope="module")
def model(data):
    return build(data[0], data[2].dataset)


def scores(model, batch):
    with torch.no_grad():
        return model.full_sort_predict(batch)


def n_parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_padded_tokens_filled_with_garbage_leave_scores_identical(data, batch):
    model = build(data[0], data[2].dataset)
    before = scores(model, batch)
    tokens, mask = model.tokens("text")
    assert (~mask[1:]).any(), "the bundled text tokens should have padded positions"
    tokens[~mask] = torch.randn(int((~mask).sum()), tokens.shape[2]) * 1e4
    assert torch.equal(scores(model, batch), before)


def test_attention_weights_on_padded_tokens_are_exactly_zero(model):
    with torch.no_grad():
        weights = model.retrieve("text", need_weights=True).attention  # [N, h, Q, 1 + T]
    _, mask = model.tokens("text")
    key_mask = torch.cat([~mask.any(1, keepdim=True), mask], 1)[:, None, None, :].expand_as(weights)
    assert weights.shape[1:3] == (2, 2)
    assert torch.all(weights[~key_mask] == 0)
    assert torch.allclose(weights.sum(-1), torch.ones(()))
    assert torch.all(weights[1:, ..., 0] == 0)  # present items never see the missing token
    assert torch.all(weights[0, ..., 0] == 1)  # the padding item 0 (no tokens) attends to it alone


def test_token_cross_attention_is_multihead_attention_with_kdim():
    """Same numbers as nn.MultiheadAttention(D, h, kdim=vdim=d_m) on items that have tokens."""
    torch.manual_seed(0)
    ours = TokenCrossAttention(16, 24, 4, 0.0)
    reference = nn.MultiheadAttention(16, 4, kdim=24, vdim=24, batch_first=True)
    with torch.no_grad():
        reference.q_proj_weight.copy_(ours.query.weight)
        reference.k_proj_weight.copy_(ours.key.weight)
        reference.v_proj_weight.copy_(ours.value.weight)
        reference.in_proj_bias.copy_(torch.cat([ours.query.bias, ours.key.bias, ours.value.bias]))
        reference.out_proj.weight.copy_(ours.out.weight)
        reference.out_proj.bias.copy_(ours.out.bias)
    queries, tokens = torch.randn(5, 3, 16), torch.randn(5, 7, 24)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 1, 3, 5, 2])[:, None]
    outputs, weights = ours(queries, tokens, mask)
    expected, expected_weights = reference(queries, tokens, tokens, key_padding_mask=~mask,
                                           average_attn_weights=False)
    assert torch.allclose(outputs, expected, atol=1e-6)
    assert torch.allclose(weights[..., 1:], expected_weights, atol=1e-6)


def test_shuffled_token_file_rows_leave_scores_unchanged(data, batch, tmp_path):
    config, _, train, *_ = data
    source = config["data_path"]
    folder = tmp_path / "scientific_mm"
    folder.mkdir()
    for suffix in (".inter", ".item", ".features.npz"):
        shutil.copy(f"{source}/scientific_mm{suffix}", folder / f"scientific_mm{suffix}")
    original = read_tokens(token_path(source))
    order = np.random.default_rng(0).permutation(len(original.tokens))
    write_tokens(token_path(str(folder)), original.tokens[order],
                 {m: v[order] for m, v in original.states.items()},
                 {m: v[order] for m, v in original.lengths.items()})
    expected = scores(build(config, train.dataset), batch)
    try:
        config["data_path"] = str(folder)
        shuffled = build(config, train.dataset)
    finally:
        config["data_path"] = source
    assert torch.equal(scores(shuffled, batch), expected)


def test_one_items_features_change_only_the_scores_involving_it(data, batch):
    model = build(data[0], data[2].dataset)
    before = scores(model, batch)
    history = batch["item_id_list"]
    item = int(history[history > 0].mode().values)  # an item in some users' histories
    tokens, mask = model.tokens("text")
    tokens[item][mask[item]] += torch.randn(int(mask[item].sum()), tokens.shape[2])
    after = scores(model, batch)
    has_item = (history == item).any(1)
    others = torch.ones(after.shape[1], dtype=torch.bool)
    others[item] = False
    assert has_item.any() and (~has_item).any()
    assert torch.equal(after[~has_item][:, others], before[~has_item][:, others])
    assert not torch.allclose(after[:, item], before[:, item])
    assert not torch.allclose(after[has_item], before[has_item])


def test_one_token_modality_and_the_missing_token(data, batch):
    model = build(data[0], data[2].dataset)
    tokens, mask = model.tokens("image")  # scientific_mm: one global 512-d vector per item
    assert tokens.shape[1:] == (1, 512) and mask[1:].all()
    with torch.no_grad():
        weights = model.retrieve("image", need_weights=True).attention  # [N, h, Q, 2]
    assert weights.shape[1:] == (2, 3, 2) and torch.all(weights[1:, ..., 1] == 1)
    mask[7] = False  # item 7 loses its image: it attends to the learned missing token alone
    with torch.no_grad():
        retrieval = model.retrieve("image", need_weights=True)
    assert torch.all(retrieval.attention[7, ..., 0] == 1)
    tokens[7] = 1e4  # its former image is never read
    with torch.no_grad():
        assert torch.equal(model.retrieve("image").aggregated, retrieval.aggregated)
    assert retrieval.aggregated[7].abs().sum() > 0
    assert torch.isfinite(scores(model, batch)).all()


def test_in_batch_infonce_matches_a_hand_computation():
    users = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])
    targets = torch.tensor([[2.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    target_ids = torch.tensor([4, 9, 4])  # sequences 0 and 2 share their target: not each other's negative
    tau = 0.5
    cos = [[1.0, 0.0, 1.0], [0.6, 0.8, 0.6], [0.0, 1.0, 0.0]]
    loss0 = -math.log(math.exp(cos[0][0] / tau) / (math.exp(cos[0][0] / tau) + math.exp(cos[0][1] / tau)))
    loss1 = -math.log(math.exp(cos[1][1] / tau) / sum(math.exp(c / tau) for c in cos[1]))
    loss2 = -math.log(math.exp(cos[2][2] / tau) / (math.exp(cos[2][1] / tau) + math.exp(cos[2][2] / tau)))
    expected = (loss0 + loss1 + loss2) / 3
    assert in_batch_infonce(users, targets, target_ids, tau).item() == pytest.approx(expected, rel=1e-6)


def test_item_side_runs_once_per_step_and_per_evaluation_batch(data, batch):
    model = build(data[0], data[2].dataset)
    calls = []
    for retriever in model.retrievers.values():
        retriever.register_forward_hook(lambda *_: calls.append(1))
    model.train()
    model.calculate_loss(next(iter(data[2])))
    assert len(calls) == 2
    model.eval()
    scores(model, batch)
    assert len(calls) == 4


ABLATIONS = {
    "retriever": ("mlp", lambda m: all(isinstance(r, FirstTokenMLP) for r in m.retrievers.values())
                  and m.enrichment.experts.shape[0] == 2),
    "id_enrichment": (False, lambda m: m.enrichment is None),
    "use_text": (False, lambda m: set(m.retrievers) == {"image"} and set(m.encoders) == {"id", "image"}
                 and m.enrichment.experts.shape[0] == 3),
    "use_image": (False, lambda m: set(m.retrievers) == {"text"} and set(m.encoders) == {"id", "text"}
                  and m.enrichment.experts.shape[0] == 2),
}


@pytest.mark.parametrize("key", list(ABLATIONS))
def test_each_ablation_switch_removes_what_it_says(data, batch, model, key):
    value, removed = ABLATIONS[key]
    assert isinstance(model.retrievers["text"], QueryRetriever) and model.enrichment.experts.shape[0] == 5
    config = data[0]
    default = config[key]
    try:
        config[key] = value
        ablated = build(config, data[2].dataset)
    finally:
        config[key] = default
    assert removed(ablated)
    assert n_parameters(ablated) < n_parameters(model)
    assert not torch.allclose(scores(ablated, batch), scores(model, batch))


def test_gate_softmax_sums_the_retrieved_vectors_with_weights_summing_to_one():
    torch.manual_seed(0)
    retriever = QueryRetriever(16, 8, 3, 2, 0.0, 1e-12, gate_softmax=True).eval()
    ids, tokens, mask = torch.randn(4, 16), torch.randn(4, 5, 8), torch.ones(4, 5, dtype=torch.bool)
    retrieval = retriever(ids, tokens, mask)
    gate = retriever.gate(retrieval.vectors.flatten(1)).softmax(-1)  # [4, 3]
    assert torch.allclose(retrieval.aggregated, (gate[..., None] * retrieval.vectors).sum(1), atol=1e-6)


@pytest.mark.parametrize("key, value, message", [
    ("use_text", False, "use_text and use_image are both False"),
    ("token_dims", {"text": 0}, "token_dims"),
    ("text_heads", 3, "text_heads = 3 must divide"),
    ("cl_weight", -1, "cl_weight"),
    ("retriever", "attention", "retriever must be one of"),
])
def test_bad_config_fails_naming_the_key(key, value, message):
    overrides = {key: value, **({"use_image": False} if key == "use_text" else {})}
    with pytest.raises(ValueError, match=message):
        tame_config(**overrides)


def test_token_dims_are_checked_against_the_token_file(data):
    config = data[0]
    try:
        config["token_dims"] = {"text": 768}
        with pytest.raises(Exception, match="dimension 384, expected 768"):
            TAME(config, data[2].dataset)
    finally:
        config["token_dims"] = None


def test_short_training_lowers_the_loss(data):
    model = build(data[0], data[2].dataset)
    losses = fit_steps(model, next(iter(data[2])), steps=15, lr=1e-3)
    assert losses[-1] < losses[0] - 0.5, losses


def test_trains_and_evaluates_full_sort_through_run(tmp_path):
    result = recbole_mmm4rec.run("TAME", "scientific_mm", config_dict={
        **TINY_TAME, "epochs": 1, "checkpoint_dir": str(tmp_path), "train_batch_size": 512}, saved=False)
    assert result["epochs"] == 1 and len(result["history"]) == 1
    assert np.isfinite(result["history"][0]["loss"])
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    assert result["parameters"] > 0


@pytest.mark.slow
def test_beats_pop_on_scientific_mm(tmp_path):
    common = {"show_progress": False, "state": "WARNING", "seed": 2020, "checkpoint_dir": str(tmp_path)}
    pop = recbole_mmm4rec.run("Pop", "scientific_mm", config_dict=common, saved=False)
    tame = recbole_mmm4rec.run("TAME", "scientific_mm", config_dict={**common, "epochs": 3}, saved=False)
    assert tame["test_result"]["ndcg@10"] > pop["test_result"]["ndcg@10"]
