"""MMM4Rec on real bundled data: padding never leaks, time awareness, missing images, config errors."""

import pytest
import torch

from conftest import build_model, make_config


def _user_vectors(model, batch, item_seq=None, timestamps=None):
    with torch.no_grad():
        return model.forward(
            batch["item_id_list"] if item_seq is None else item_seq,
            batch["item_length"],
            batch["timestamp_list"] if timestamps is None else timestamps,
        )


def _padding(batch):
    length = batch["item_id_list"].shape[1]
    return torch.arange(length) >= batch["item_length"].unsqueeze(1)  # [B, L] True on padding


def _real_timestamps(batch, gap_seed=0):
    """Irregular increasing timestamps on real positions (the bundled data only has ordinal time)."""
    g = torch.Generator().manual_seed(gap_seed)
    gaps = torch.randint(1, 10**6, batch["timestamp_list"].shape, generator=g).float()
    return torch.cumsum(gaps, 1) * (~_padding(batch))


@pytest.mark.parametrize("time_aware", [True, False])
def test_padded_positions_change_nothing(scientific, test_batch, tiny_dict, time_aware):
    dataset = scientific[1]
    model = build_model(make_config(tiny_dict, time_aware=time_aware), dataset)
    pad = _padding(test_batch)
    assert pad.any(), "the batch must contain padded positions"
    timestamps = _real_timestamps(test_batch)
    reference = _user_vectors(model, test_batch, timestamps=timestamps)

    g = torch.Generator().manual_seed(1)
    junk_items = torch.randint(1, dataset.item_num, pad.shape, generator=g)
    junk_times = torch.randint(0, 10**9, pad.shape, generator=g).float()
    items = torch.where(pad, junk_items, test_batch["item_id_list"])
    times = torch.where(pad, junk_times, timestamps)
    assert not torch.equal(items, test_batch["item_id_list"])
    assert torch.allclose(_user_vectors(model, test_batch, items, times), reference, atol=1e-5)


def test_time_changes_output_only_when_time_aware(scientific, test_batch, tiny_dict):
    dataset = scientific[1]
    first, second = _real_timestamps(test_batch, 0), _real_timestamps(test_batch, 1)
    timed = build_model(make_config(tiny_dict, time_aware=True), dataset)
    untimed = build_model(make_config(tiny_dict, time_aware=False), dataset)
    diff = (_user_vectors(timed, test_batch, timestamps=first) - _user_vectors(timed, test_batch, timestamps=second))
    assert diff.abs().max() > 1e-4  # at the default initialisation (measured ~1e-3)
    assert torch.equal(
        _user_vectors(untimed, test_batch, timestamps=first), _user_vectors(untimed, test_batch, timestamps=second)
    )


def test_scores_agree_between_predict_and_full_sort(scientific, test_batch, tiny_dict):
    model = build_model(make_config(tiny_dict), scientific[1])
    batch = test_batch[:16]
    with torch.no_grad():
        full = model.full_sort_predict(batch)  # [16, n_items]
        one = model.predict(batch)  # scores of the target items
    assert full.shape == (16, scientific[1].item_num)
    assert torch.allclose(full.gather(1, batch["item_id"].unsqueeze(1)).squeeze(1), one, atol=1e-5)


def test_items_without_image_get_finite_scores(scientific, test_batch, tiny_dict):
    model = build_model(make_config(tiny_dict), scientific[1])
    present = model.items["image"].present.clone()  # the buffer is the dataset's tensor: copy
    present[1::2] = False  # half of the items lose their image
    model.items["image"].present = present
    with torch.no_grad():
        scores = model.full_sort_predict(test_batch)
    assert torch.isfinite(scores).all()
    model.train()
    loss = model.calculate_loss(test_batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.encoder.adapters["image"].missing.grad.abs().sum() > 0  # the learned "no image" vector is used


def test_no_image_vector_and_bias_rows_learn_without_images(office):
    """office has no image at all: every item's image vector is the learned "no image" vector plus its bias
    row. Its gradients are finite and of the content's order (a zero start gave ~1e14 through L2
    normalisation and LayerNorm), and the vector and the image-less items' bias rows move with training."""
    from conftest import fit_steps

    from recbole_mmm4rec.models import MMM4Rec

    torch.manual_seed(0)
    model = MMM4Rec(office[0], office[1])
    assert not model.items["image"].present.any()
    batch = next(iter(office[2]))
    model.train()
    model.calculate_loss(batch).backward()
    missing = model.encoder.adapters["image"].missing
    text_linear = model.encoder.adapters["text"].linear.weight
    assert torch.isfinite(missing.grad).all()
    assert missing.grad.norm() < 1e3 * text_linear.grad.norm()
    before, bias_before = missing.detach().clone(), model.items["image"].bias.weight.detach().clone()
    fit_steps(model, batch, steps=5, lr=1e-3)
    targets = batch["item_id"].unique()
    assert (missing.detach() - before).norm() > 1e-3 * before.norm()
    moved = (model.items["image"].bias.weight.detach()[targets] - bias_before[targets]).norm(dim=1)
    assert (moved > 0).float().mean() > 0.9  # the rows of the batch's targets all learn


def test_item_bias_is_the_with_id_variant(scientific, tiny_dict):
    with_id = build_model(make_config(tiny_dict, item_modality_bias=True), scientific[1])
    without_id = build_model(make_config(tiny_dict, item_modality_bias=False), scientific[1])
    n_items = scientific[1].item_num
    assert with_id.items["text"].bias.weight.shape == (n_items, 32)
    assert torch.count_nonzero(with_id.items["text"].bias.weight) == 0  # zero-initialised
    assert without_id.items["text"].bias is None
    assert not any(name.startswith("items.") for name in without_id.state_dict())
    assert not any(name.startswith("items.") for name, _ in with_id.encoder.named_parameters())


def test_alignment_stage_shares_one_tissd(scientific, tiny_dict):
    model = build_model(make_config(tiny_dict, num_layers=2), scientific[1])
    assert len(model.encoder.layers) == 2
    tissd_params = {name for name, _ in model.named_parameters() if ".tissd." in name}
    assert tissd_params and all(name.startswith("encoder.layers.") for name in tissd_params)
    # one block per layer serves both streams: no second copy of its weights anywhere
    assert sum(".in_proj.weight" in name for name in tissd_params) == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ({"head_dim": 24}, "head_dim"),
        ({"n_groups": 3}, "n_groups"),
        ({"temperature": 0}, "temperature"),
        ({"ssd_mode": "fast"}, "ssd_mode"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
    ],
)
def test_bad_config_values_name_the_key(scientific, tiny_dict, override, message):
    with pytest.raises(ValueError, match=message):
        build_model(make_config(tiny_dict, **override), scientific[1])
