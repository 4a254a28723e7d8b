"""Items as frozen modality features: one domain's feature table and the adapter that maps it to the
hidden size (MMM4Rec eq. 2). Used by MMM4Rec, TextSASRec and UniSRec."""

import torch
import torch.nn as nn


class ItemTable(nn.Module):
    """One domain's items for one modality: frozen features [n_items, d] and a presence mask (buffers,
    not saved in checkpoints: they come from the dataset) plus, in the with-ID variant, the trainable
    item-modality bias E_m [n_items, D], zero-initialised. Domain-specific: never transferred."""

    def __init__(self, features, present, hidden_size, item_bias):
        super().__init__()
        self.register_buffer("features", features, persistent=False)
        self.register_buffer("present", present, persistent=False)
        self.bias = nn.Embedding(features.shape[0], hidden_size) if item_bias else None
        if item_bias:
            nn.init.zeros_(self.bias.weight)


class ModalityAdapter(nn.Module):
    """Eq. 2: a linear map d_m -> D of a modality's features; items lacking the modality get a learned
    "missing" vector instead (never a silent zero feature row); plus the item's bias when there is one.

    The missing vector starts at N(0, 0.02), the scale of an adapted feature vector: a zero start would
    hand L2 normalisation and LayerNorm the zero vector (gradients of 1/eps, DESIGN.md §8). Padding
    (item 0) has no feature either and uses it too, so no zero vector reaches a normalisation.

    The adapted vector depends on the item alone, so the whole table is adapted once (one [n_items, d]
    matmul per training step) and sequences index it: the same numbers as adapting each of the B·L
    positions, at a fraction of the cost (tests/test_adapters.py).
    """

    def __init__(self, feature_dim, hidden_size):
        super().__init__()
        self.linear = nn.Linear(feature_dim, hidden_size)
        self.missing = nn.Parameter(torch.empty(hidden_size).normal_(0.0, 0.02))

    def forward(self, table):
        """table: an ItemTable -> every item's adapted vector [n_items, D]."""
        adapted = torch.where(table.present.unsqueeze(-1), self.linear(table.features), self.missing)
        return adapted if table.bias is None else adapted + table.bias.weight
