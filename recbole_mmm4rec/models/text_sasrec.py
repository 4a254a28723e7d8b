r"""TextSASRec: RecBole's SASRec with item IDs replaced by adapted text features.

The text variant of an ID model that the MMM4Rec paper compares against (Table II, "T" / "T+ID"):
SASRec (Kang & McAuley, ICDM 2018) unchanged, except that an item's embedding is its frozen text
feature through a linear adapter (eq. 2 of MMM4Rec, the same ``ModalityAdapter``), both for the input
sequence and for scoring the candidates. ``item_modality_bias: True`` adds a zero-initialised per-item
bias (the "T+ID" setting); False is text only and transfers across domains.
"""

import torch
import torch.nn as nn
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_mmm4rec.layers.config import (require_bool, require_divides, require_positive_int,
                                           require_positive_number, require_probability)
from recbole_mmm4rec.layers.adapters import ItemTable, ModalityAdapter


class TextItemEmbedding(nn.Module):
    """A drop-in for SASRec's ``nn.Embedding``: ``(ids) -> [*, D]`` and ``.weight`` -> [n_items, D]."""

    def __init__(self, features, present, hidden_size, item_bias):
        super().__init__()
        self.table = ItemTable(features, present, hidden_size, item_bias)
        self.adapter = ModalityAdapter(features.shape[1], hidden_size)

    def forward(self, items):
        return nn.functional.embedding(items, self.weight)  # a deterministic backward, as nn.Embedding

    @property
    def weight(self):
        return self.adapter(self.table)  # [n_items, D]


class TextSASRec(SASRec):
    r"""SASRec over text features (needs a dataset with a ``text`` feature file, like MMM4Rec)."""

    @staticmethod
    def check_config(config):
        """Fail early, naming the key, on values SASRec's layers cannot be built from."""
        name = "TextSASRec"
        require_positive_int(config, name, "hidden_size", "inner_size", "n_layers", "n_heads")
        require_positive_number(config, name, "layer_norm_eps", "initializer_range")
        require_probability(config, name, "hidden_dropout_prob", "attn_dropout_prob")
        require_bool(config, name, "item_modality_bias")
        require_divides(config, name, "n_heads", config["hidden_size"], f"hidden_size = {config['hidden_size']}")

    def __init__(self, config, dataset):
        self.check_config(config)
        super().__init__(config, dataset)
        features, present = dataset.item_features["text"]
        if not present[1:].all():
            missing = int((~present[1:]).sum())
            raise ValueError(f"TextSASRec: {missing} items have no text features; every item needs one")
        self.item_embedding = TextItemEmbedding(features, present, self.hidden_size, config["item_modality_bias"])
        self.item_embedding.adapter.apply(self._init_weights)
