"""ModalityAdapter adapts the whole item table once; sequences index it. Pinned against adapting each
position (the per-position form of eq. 2), with and without the item bias and with missing items."""

import pytest
import torch

from recbole_mmm4rec.layers.adapters import ItemTable, ModalityAdapter


def _per_position(adapter, table, items):
    """Eq. 2 at each position of ``items``: W f_i + b, the "missing" vector where the item has no feature."""
    adapted = adapter.linear(table.features[items])
    adapted = torch.where(table.present[items].unsqueeze(-1), adapted, adapter.missing)
    return adapted if table.bias is None else adapted + table.bias(items)


@pytest.mark.parametrize("item_bias", [False, True])
def test_adapted_table_indexed_equals_adapting_each_position(item_bias):
    torch.manual_seed(0)
    features = torch.randn(7, 5)
    present = torch.tensor([False, True, True, False, True, True, False])  # padding and two missing items
    table = ItemTable(features, present, hidden_size=4, item_bias=item_bias)
    if item_bias:
        torch.nn.init.normal_(table.bias.weight)  # a trained bias, so that it shows in the sum
    adapter = ModalityAdapter(feature_dim=5, hidden_size=4)
    items = torch.tensor([[0, 0, 3, 1, 2], [4, 5, 6, 6, 1]])  # [B, L], repeats and missing items
    indexed = adapter(table)[items]
    per_position = _per_position(adapter, table, items)
    torch.testing.assert_close(indexed, per_position, rtol=0, atol=1e-6)
    # the same gradients reach the adapter's weights, the missing vector and the bias
    upstream = torch.randn_like(indexed)
    params = [p for p in [adapter.linear.weight, adapter.linear.bias, adapter.missing] +
              ([table.bias.weight] if item_bias else [])]
    for got, want in zip(torch.autograd.grad(indexed, params, upstream),
                         torch.autograd.grad(per_position, params, upstream)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
