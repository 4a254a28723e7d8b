"""The causal depthwise conv: causality, a hand-computed case, and the fast path (shifted multiply-adds
with a hand-written backward) against the F.conv1d reference, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from recbole_mmm4rec.layers.conv import CausalConv1d, _weight_grad, causal_conv, causal_conv_reference


def test_causal_conv_ignores_future():
    torch.manual_seed(0)
    conv = CausalConv1d(channels=3, kernel_size=4)
    x = torch.randn(2, 10, 3)
    y = conv(x)
    assert y.shape == (2, 10, 3)
    for l in range(10):
        x_changed = x.clone()
        x_changed[:, l + 1 :] = torch.randn_like(x_changed[:, l + 1 :])
        x_changed[:, l] += 1.0
        y_changed = conv(x_changed)
        torch.testing.assert_close(y_changed[:, :l], y[:, :l], rtol=0, atol=0)
        assert (y_changed[:, l] - y[:, l]).abs().max() > 0


def test_causal_conv_by_hand():
    conv = CausalConv1d(channels=2, kernel_size=3)
    with torch.no_grad():
        conv.conv.weight.copy_(torch.tensor([[[1.0, 2.0, 3.0]], [[0.5, -1.0, 0.0]]]))  # [C, 1, k]
        conv.conv.bias.copy_(torch.tensor([0.1, -0.2]))
    x = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [-2.0, 4.0]]])  # [1, L=3, C=2]
    # channel 0: y_l = 1 x_{l-2} + 2 x_{l-1} + 3 x_l + 0.1 (x_{<0} = 0)
    pre0 = [3 * 1 + 0.1, 2 * 1 + 3 * 3 + 0.1, 1 * 1 + 2 * 3 + 3 * -2 + 0.1]
    # channel 1: y_l = 0.5 x_{l-2} - 1 x_{l-1} + 0 x_l - 0.2
    pre1 = [-0.2, -1 * 2 - 0.2, 0.5 * 2 - 1 * -1 - 0.2]
    expected = F.silu(torch.tensor([pre0, pre1]).T.unsqueeze(0))
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 20])
@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_fast_conv_equals_reference_forward_and_backward(length, kernel):
    """Every gradient, at lengths shorter than, equal to and longer than the kernel (float64)."""
    g = torch.Generator().manual_seed(length * 10 + kernel)
    x, weight, bias = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
                       for shape in [(3, length, 6), (6, kernel), (6,)])
    upstream = torch.randn(3, length, 6, generator=g, dtype=torch.float64)
    fast, reference = causal_conv(x, weight, bias), causal_conv_reference(x, weight, bias)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-12)
    for got, want in zip(torch.autograd.grad(fast, (x, weight, bias), upstream),
                         torch.autograd.grad(reference, (x, weight, bias), upstream)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk_elements", [1, 7, 60, 10**6])
def test_weight_gradient_over_blocks_of_rows_equals_the_reference(chunk_elements):
    """Blocks of 1 row, of a few rows with a ragged last block, and one block for the whole batch."""
    g = torch.Generator().manual_seed(chunk_elements)
    x, weight, bias = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
                       for shape in [(9, 5, 2), (2, 4), (2,)])
    upstream = torch.randn(9, 5, 2, generator=g, dtype=torch.float64)
    want = torch.autograd.grad(causal_conv_reference(x, weight, bias), weight, upstream)[0]
    torch.testing.assert_close(_weight_grad(upstream, x.detach(), 4, chunk_elements), want, rtol=0, atol=1e-12)


def test_fast_conv_gradcheck():
    g = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
                   for shape in [(2, 7, 3), (3, 4), (3,)])
    assert torch.autograd.gradcheck(causal_conv, inputs)


def test_fast_conv_on_a_strided_input_as_the_blocks_give_it():
    """The SSD blocks hand the conv a slice of in_proj's output (not contiguous); float32 as in training."""
    torch.manual_seed(0)
    conv = CausalConv1d(channels=5, kernel_size=4)
    projected = torch.randn(4, 9, 12, requires_grad=True)
    x = projected[..., 3:8]  # [B, L, 5], strided
    fast = conv(x)
    reference = F.silu(causal_conv_reference(x, conv.conv.weight.squeeze(1), conv.conv.bias))
    torch.testing.assert_close(fast, reference, rtol=1e-6, atol=1e-6)
    upstream = torch.randn_like(fast)
    got = torch.autograd.grad(fast, (projected, conv.conv.weight), upstream)
    want = torch.autograd.grad(reference, (projected, conv.conv.weight), upstream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_mmm4rec_with_the_fast_conv_equals_the_reference_conv(scientific, test_batch, monkeypatch):
    """The default model as users get it: loss and every gradient with the F.conv1d reference swapped in."""
    from conftest import build_model
    from recbole_mmm4rec.layers import conv as conv_module

    def loss_and_grads():
        model = build_model(scientific[0], scientific[1])
        loss = model.calculate_loss(test_batch)
        return loss, torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])

    fast_loss, fast_grads = loss_and_grads()
    monkeypatch.setattr(conv_module, "causal_conv", causal_conv_reference)
    reference_loss, reference_grads = loss_and_grads()
    torch.testing.assert_close(fast_loss, reference_loss, rtol=1e-6, atol=1e-6)
    for got, want in zip(fast_grads, reference_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
