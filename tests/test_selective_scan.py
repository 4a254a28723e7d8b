"""Mamba-1's selective scan (the step recurrence is the oracle) and the Mamba block of Mamba4Rec."""

import math

import pytest
import torch
import torch.nn.functional as F

from recbole_mmm4rec.layers import selective_scan as scan_module
from recbole_mmm4rec.layers.selective_scan import (
    MambaBlock,
    selective_scan,
    selective_scan_recurrent,
    selective_scan_torch,
)
from recbole_mmm4rec.models.mamba4rec import SSMRecommender

BLOCK_CONFIG = {"hidden_size": 16, "expand": 2, "d_state": 8, "d_conv": 4, "dt_rank": "auto"}


def make_inputs(length, E=6, N=5, batch=2, dtype=torch.float64, seed=0):
    """Realistic magnitudes: dt = softplus(randn), A = -exp(U[0, log 2N]) per channel and state, D ~ randn."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    x, dt = randn(batch, length, E), F.softplus(randn(batch, length, E))
    A = -torch.exp(torch.rand(E, N, generator=g, dtype=dtype) * math.log(2 * N))
    B, C, D = randn(batch, length, N), randn(batch, length, N), randn(E)
    return [x, dt, A, B, C, D]


def closed_form(x, dt, A, B, C, D):
    """y_l = sum_{s <= l} C_l . (prod_{k=s+1..l} exp(dt_k A)) dt_s B_s x_s + D x_l, summed term by term."""
    batch, length, E = x.shape
    y = D * x
    for l in range(length):
        for s in range(l + 1):
            decay = torch.exp(dt[:, s + 1 : l + 1, :, None].sum(1) * A)  # [B, E, N]
            term = decay * (dt[:, s] * x[:, s])[:, :, None] * B[:, s, None, :]
            y[:, l] = y[:, l] + torch.einsum("ben,bn->be", term, C[:, l])
    return y


def test_recurrence_is_the_closed_form():
    inputs = make_inputs(6)
    torch.testing.assert_close(selective_scan_recurrent(*inputs), closed_form(*inputs), rtol=0, atol=1e-12)


@pytest.mark.parametrize("length", [1, 4, 20, 64])
def test_torch_form_matches_recurrence_float64(length):
    inputs = make_inputs(length, seed=length)
    y_rec = selective_scan_recurrent(*inputs)
    y = selective_scan_torch(*inputs)
    assert y.shape == (2, length, 6)
    torch.testing.assert_close(y, y_rec, rtol=0, atol=1e-12)


def test_torch_form_gradients_match_recurrence_float64():
    inputs = make_inputs(20, seed=3)
    weight = torch.randn(2, 20, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def gradients(form):
        leaves = [t.clone().requires_grad_() for t in inputs]
        (form(*leaves) * weight).sum().backward()
        return [t.grad for t in leaves]

    for name, got, want in zip("x dt A B C D".split(), gradients(selective_scan_torch),
                               gradients(selective_scan_recurrent)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10, msg=f"d{name}")


def test_dispatcher_on_cpu_is_the_torch_form():
    inputs = make_inputs(9, dtype=torch.float32)
    assert torch.equal(selective_scan(*inputs), selective_scan_torch(*inputs))


def test_block_shapes_and_initialisation():
    torch.manual_seed(0)
    block = MambaBlock(BLOCK_CONFIG)
    E, N, R = 32, 8, 1  # E = expand * D; dt_rank "auto" = ceil(16 / 16)
    assert block.dt_rank == R
    assert block.in_proj.weight.shape == (2 * E, 16) and block.in_proj.bias is None
    assert block.x_proj.weight.shape == (R + 2 * N, E) and block.x_proj.bias is None
    assert block.dt_proj.weight.shape == (E, R)
    assert block.out_proj.weight.shape == (16, E) and block.out_proj.bias is None
    # S4D-real: A = -(1, ..., N) for every channel; D = 1; softplus(dt_bias) log-uniform in [1e-3, 1e-1]
    torch.testing.assert_close(-torch.exp(block.A_log), -torch.arange(1.0, N + 1).repeat(E, 1))
    assert torch.equal(block.D, torch.ones(E))
    dt0 = F.softplus(block.dt_proj.bias)
    assert (dt0 >= 1e-3 * (1 - 1e-5)).all() and (dt0 <= 1e-1 * (1 + 1e-5)).all()
    assert MambaBlock({**BLOCK_CONFIG, "dt_rank": 3}).x_proj.weight.shape == (3 + 2 * N, E)
    assert block(torch.randn(3, 11, 16)).shape == (3, 11, 16)


def test_block_is_causal():
    torch.manual_seed(0)
    block = MambaBlock(BLOCK_CONFIG).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    changed = x.clone()
    changed[:, 7] += 1.0
    with torch.no_grad():
        y, y_changed = block(x), block(changed)
    torch.testing.assert_close(y_changed[:, :7], y[:, :7], rtol=0, atol=1e-12)
    assert (y_changed[:, 7:] - y[:, 7:]).abs().amax(dim=(0, 2)).min() > 1e-6  # every later position moves


def test_gradients_reach_the_ssm_parameters_at_default_init():
    """The model's own initialisation (N(0, 0.02) linear layers; dt_proj, A_log, D as Mamba-1), no rescaling."""
    torch.manual_seed(0)
    block = MambaBlock({**BLOCK_CONFIG, "hidden_size": 64, "d_state": 32, "dt_rank": "auto"})
    block.apply(SSMRecommender._init_weights)
    x = F.layer_norm(torch.randn(8, 20, 64), (64,))  # the embedding LayerNorm's output scale
    (block(x) * torch.randn(8, 20, 64)).sum().backward()
    for name, param in block.named_parameters():
        assert torch.isfinite(param.grad).all(), name
    for name in ("dt_proj.weight", "dt_proj.bias", "A_log", "x_proj.weight", "D", "in_proj.weight", "out_proj.weight"):
        assert block.get_parameter(name).grad.abs().max() > 0, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for mamba-ssm's kernel")
def test_cuda_kernel_matches_torch_form():
    """mamba-ssm's fused scan (float32, no TF32: no matrix products) against the float64 pure-PyTorch form,
    forward and every gradient."""
    pytest.importorskip("mamba_ssm", reason="mamba-ssm is not installed")
    assert scan_module._mamba_kernel() is not None
    for length in (20, 200):
        inputs = make_inputs(length, E=128, N=32, batch=4, seed=length)
        weight = torch.randn(4, length, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

        def run(device, dtype):
            leaves = [t.detach().to(device, dtype).clone().requires_grad_() for t in inputs]
            y = selective_scan(*leaves)
            (y * weight.to(device, dtype)).sum().backward()
            return [y.detach().double().cpu()] + [t.grad.double().cpu() for t in leaves]

        expected = run("cpu", torch.float64)
        for name, got, want in zip("y dx ddt dA dB dC dD".split(), run("cuda", torch.float32), expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item(),
                                       msg=f"{name}, L = {length}")
