"""TextSASRec: SASRec whose item embeddings are adapted text features."""

import pytest
import torch
from recbole.data import create_dataset, data_preparation

import recbole_mmm4rec
from conftest import TINY, fit_steps

SMALL = {**{k: TINY[k] for k in ("show_progress", "state", "seed")}, "hidden_size": 16, "inner_size": 32,
         "n_layers": 1, "train_batch_size": 256}


@pytest.fixture(scope="module")
def data():
    config = recbole_mmm4rec.build_config("TextSASRec", "scientific_mm", config_dict=SMALL)
    dataset = create_dataset(config)
    return config, dataset, *data_preparation(config, dataset)


@pytest.mark.parametrize("with_id", [False, True])
def test_trains_and_ranks_all_items_from_text(data, with_id):
    config, dataset, train, _, test = data
    config["item_modality_bias"] = with_id
    torch.manual_seed(0)
    model = recbole_mmm4rec.quick_start.get_model("TextSASRec")(config, dataset)
    assert not any(isinstance(m, torch.nn.Embedding) and m.num_embeddings == dataset.item_num
                   and m is not getattr(model.item_embedding.table, "bias", None) for m in model.modules())
    batch = next(iter(train))
    losses = fit_steps(model, batch, steps=15, lr=1e-2)
    assert losses[-1] < 0.9 * losses[0]
    model.eval()
    interaction = next(iter(test))[0][:8]
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        assert scores.shape == (8, dataset.item_num) and torch.isfinite(scores).all()
        gathered = scores.gather(1, interaction["item_id"].unsqueeze(1)).squeeze(1)
        assert torch.allclose(model.predict(interaction), gathered, atol=1e-5)
    assert (model.item_embedding.table.bias is not None) == with_id


def test_scores_follow_the_text_features(data):
    config, dataset, _, _, test = data
    config["item_modality_bias"] = False
    torch.manual_seed(0)
    model = recbole_mmm4rec.quick_start.get_model("TextSASRec")(config, dataset).eval()
    interaction = next(iter(test))[0][:8]
    with torch.no_grad():
        before = model.full_sort_predict(interaction)
        model.item_embedding.table.features = model.item_embedding.table.features.flip(0)
        assert not torch.allclose(model.full_sort_predict(interaction), before)
