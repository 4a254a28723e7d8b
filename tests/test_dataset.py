"""The multi-modal dataset: features follow item tokens, bad feature files fail loudly, images are optional."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.data import create_dataset, data_preparation

from conftest import build_model, make_config
from recbole_mmm4rec.data.dataset import MultiModalSequentialDataset
from recbole_mmm4rec.data.features import FeatureFileError, read_features, write_features
from recbole_mmm4rec.quick_start import PROJECT_ROOT

SOURCE = PROJECT_ROOT / "atomic_data" / "scientific_mm"


def _copy_dataset(root: Path, edit):
    """atomic_data/scientific_mm copied under root, its feature file rewritten by edit(tokens, tables, masks)."""
    target = root / "scientific_mm"
    shutil.copytree(SOURCE, target)
    features = read_features(str(SOURCE / "scientific_mm.features.npz"))
    tokens, tables, masks = edit(features.tokens.copy(), dict(features.tables), dict(features.masks))
    write_features(str(target / "scientific_mm.features.npz"), tokens, tables, masks, dtype=np.float32)
    return str(root)


def _dataset(tiny_dict, data_path, **overrides):
    return create_dataset(make_config(tiny_dict, data_path=data_path, **overrides))


def test_dataset_class_is_resolved_by_recbole(scientific):
    assert isinstance(scientific[1], MultiModalSequentialDataset)
    table, present = scientific[1].item_features["image"]
    assert table.shape == (scientific[1].item_num, 512) and present[1:].all() and not present[0]


def test_shuffled_feature_rows_leave_every_score_unchanged(scientific, test_batch, tiny_dict, tmp_path):
    def shuffle(tokens, tables, masks):
        order = np.random.default_rng(0).permutation(len(tokens))
        return tokens[order], {m: t[order] for m, t in tables.items()}, {m: k[order] for m, k in masks.items()}

    shuffled = _dataset(tiny_dict, _copy_dataset(tmp_path, shuffle))
    config = scientific[0]
    with torch.no_grad():
        reference = build_model(config, scientific[1]).full_sort_predict(test_batch)
        scores = build_model(config, shuffled).full_sort_predict(test_batch)
    assert torch.equal(scores, reference)


def test_feature_file_lacking_an_item_names_file_and_item(tiny_dict, tmp_path):
    data_path = _copy_dataset(tmp_path, lambda t, tb, m: (t[1:], {k: v[1:] for k, v in tb.items()}, {}))
    missing = read_features(str(SOURCE / "scientific_mm.features.npz")).tokens[0]
    with pytest.raises(FeatureFileError, match=rf"scientific_mm\.features\.npz.*{missing}"):
        _dataset(tiny_dict, data_path)


def test_feature_file_of_wrong_dimension_is_refused(tiny_dict, tmp_path):
    data_path = _copy_dataset(tmp_path, lambda t, tb, m: (t, {**tb, "text": tb["text"][:, :384]}, m))
    with pytest.raises(FeatureFileError, match=r"scientific_mm\.features\.npz.*text.*384.*512"):
        _dataset(tiny_dict, data_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_feature_file_with_nan_or_inf_names_the_item(tiny_dict, tmp_path, bad):
    data_path = _copy_dataset(tmp_path, lambda t, tb, m: (t, tb, m))
    path = Path(data_path) / "scientific_mm" / "scientific_mm.features.npz"
    arrays = dict(np.load(path))  # write_features refuses NaN/inf: plant it in the archive directly
    arrays["image"][7, 3] = bad
    np.savez(path, **arrays)
    token = arrays["item_id"][7]
    with pytest.raises(FeatureFileError, match=rf"features\.npz.*image.*NaN or inf.*{token}"):
        _dataset(tiny_dict, data_path)


def test_dataset_without_images_trains_and_scores(tiny_dict, tmp_path):
    def drop_images(tokens, tables, masks):
        return tokens, {"text": tables["text"]}, {}

    config = make_config(tiny_dict, data_path=_copy_dataset(tmp_path, drop_images), feature_dims={"text": 512})
    dataset = create_dataset(config)
    _, present = dataset.item_features["image"]
    assert not present.any()
    train, _, test = data_preparation(config, dataset)
    model = build_model(config, dataset).train()
    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    assert torch.isfinite(loss)
    with torch.no_grad():
        assert torch.isfinite(model.eval().full_sort_predict(next(iter(test))[0])).all()
