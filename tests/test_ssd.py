"""SSD forms (quadratic, chunked, recurrent), the dispatcher and the gated RMSNorm."""

import pytest
import torch
import torch.nn.functional as F

from recbole_mmm4rec.layers import ssd as ssd_module
from recbole_mmm4rec.layers.ssd import (
    GatedRMSNorm,
    segsum,
    ssd,
    ssd_chunked,
    ssd_quadratic,
    ssd_recurrent,
)

CHUNK = 8


def make_inputs(length, H=4, G=2, P=3, N=5, batch=2, dtype=torch.float64, seed=0):
    """Realistic magnitudes: dt = softplus(randn), A = -exp(U[log 1, log 16]), D ~ randn."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    x = randn(batch, length, H, P)
    dt = F.softplus(randn(batch, length, H))
    A = -torch.exp(torch.rand(H, generator=g, dtype=dtype) * torch.log(torch.tensor(16.0, dtype=dtype)))
    B, C = randn(batch, length, G, N), randn(batch, length, G, N)
    D = randn(H)
    return [x, dt, A, B, C, D]


FORMS = {
    "quadratic": ssd_quadratic,
    "chunked": lambda *args: ssd_chunked(*args, chunk_size=CHUNK),
    "recurrent": ssd_recurrent,
}


def test_segsum_matches_definition():
    x = torch.randn(3, 6, dtype=torch.float64)
    out = segsum(x)
    assert out.shape == (3, 6, 6)
    for i in range(6):
        for j in range(6):
            if j <= i:
                torch.testing.assert_close(out[:, i, j], x[:, j + 1 : i + 1].sum(-1), rtol=0, atol=1e-12)
            else:
                assert torch.isneginf(out[:, i, j]).all()


@pytest.mark.parametrize("G", [1, 4])
@pytest.mark.parametrize("length", [1, 7, 8, 16, 21, 50])
def test_forms_agree_float64(length, G):
    inputs = make_inputs(length, H=4, G=G)
    y_rec = ssd_recurrent(*inputs)
    assert y_rec.shape == (2, length, 4, 3)
    torch.testing.assert_close(ssd_quadratic(*inputs), y_rec, rtol=0, atol=1e-10)
    torch.testing.assert_close(ssd_chunked(*inputs, chunk_size=CHUNK), y_rec, rtol=0, atol=1e-10)


def test_groups_share_B_C_by_head_index():
    """Head h reads group h // (H // G): with G = 2, H = 4, heads 0-1 use group 0 and heads 2-3 group 1."""
    x, dt, A, B, C, D = make_inputs(5, H=4, G=2)
    y = ssd_recurrent(x, dt, A, B, C, D)
    B_heads, C_heads = B.repeat_interleave(2, dim=2), C.repeat_interleave(2, dim=2)  # [B, L, 4, N]
    torch.testing.assert_close(ssd_recurrent(x, dt, A, B_heads, C_heads, D), y, rtol=0, atol=0)
    assert torch.equal(B_heads[:, :, 1], B[:, :, 0]) and torch.equal(B_heads[:, :, 2], B[:, :, 1])


def test_recurrent_single_step_by_hand():
    """L = 1: h = dt x B^T, y = h C + D x = dt (B . C) x + D x."""
    x, dt, A, B, C, D = make_inputs(1, H=2, G=1)
    expected = (dt[..., None] * (B * C).sum(-1)[..., None] + D[:, None]) * x  # [B, 1, H, P]
    torch.testing.assert_close(ssd_recurrent(x, dt, A, B, C, D), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("which", ["x", "dt", "B", "C"])
def test_causal(form, which):
    length, k = 13, 9
    inputs = make_inputs(length)
    y = FORMS[form](*inputs)
    index = {"x": 0, "dt": 1, "B": 3, "C": 4}[which]
    changed = list(inputs)
    changed[index] = changed[index].clone()
    changed[index][:, k:] += 1.0  # dt stays positive
    y_changed = FORMS[form](*changed)
    torch.testing.assert_close(y_changed[:, :k], y[:, :k], rtol=0, atol=0)
    assert (y_changed[:, k] - y[:, k]).abs().max() > 1e-3


def test_ssd_auto_dispatch(monkeypatch):
    calls = []
    monkeypatch.setattr(ssd_module, "ssd_quadratic", lambda *a: calls.append("quadratic") or ssd_quadratic(*a))
    monkeypatch.setattr(ssd_module, "ssd_chunked", lambda *a: calls.append("chunked") or ssd_chunked(*a))
    for length, expected in [(5, "quadratic"), (CHUNK, "quadratic"), (CHUNK + 1, "chunked"), (20, "chunked")]:
        inputs = make_inputs(length)
        y = ssd(*inputs, chunk_size=CHUNK)
        assert calls[-1] == expected
        torch.testing.assert_close(y, ssd_recurrent(*inputs), rtol=0, atol=1e-10)
    inputs = make_inputs(20)
    ssd(*inputs, chunk_size=CHUNK, mode="quadratic")
    assert calls[-1] == "quadratic"
    ssd(*inputs, chunk_size=64, mode="chunked")
    assert calls[-1] == "chunked"


def test_ssd_bad_mode():
    with pytest.raises(ValueError, match="ssd_mode") as err:
        ssd(*make_inputs(3), chunk_size=CHUNK, mode="fast")
    assert "quadratic" in str(err.value) and "chunked" in str(err.value)


def test_gradients_chunked_equal_quadratic():
    def grads(fn):
        inputs = [t.clone().requires_grad_() for t in make_inputs(21, G=2, seed=3)]
        y = fn(*inputs)
        weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
        return torch.autograd.grad((y * weight).sum(), inputs)

    grads_quadratic = grads(ssd_quadratic)
    grads_chunked = grads(lambda *a: ssd_chunked(*a, chunk_size=CHUNK))
    for name, gq, gc in zip(["x", "dt", "A", "B", "C", "D"], grads_quadratic, grads_chunked):
        assert torch.isfinite(gq).all(), name
        torch.testing.assert_close(gc, gq, rtol=0, atol=1e-9, msg=name)


def test_float32_close_to_float64():
    for length in (20, 200):
        inputs = make_inputs(length, H=4, G=2, P=8, N=16, seed=length)
        y64 = ssd_recurrent(*inputs)
        inputs32 = [t.float() for t in inputs]
        torch.testing.assert_close(ssd_quadratic(*inputs32).double(), y64, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ssd_chunked(*inputs32, chunk_size=32).double(), y64, rtol=1e-4, atol=1e-4)


def test_gated_rmsnorm_by_hand():
    norm = GatedRMSNorm(dim=2, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 3.0]))
    x = torch.tensor([[3.0, 4.0]])
    z = torch.tensor([[0.0, 100.0]])  # silu(0) = 0, silu(100) = 100
    # gated = [0, 400]; rms = sqrt((0 + 400^2) / 2) = 400 / sqrt(2); normed = [0, sqrt(2)]
    expected = torch.tensor([[0.0, 3.0 * 2**0.5]])
    torch.testing.assert_close(norm(x, z), expected)
    assert torch.equal(GatedRMSNorm(dim=5, eps=1e-5).weight, torch.ones(5))


def test_gated_rmsnorm_random():
    norm = GatedRMSNorm(dim=6, eps=1e-5)
    x, z = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    gated = x * z * torch.sigmoid(z)
    expected = gated / torch.sqrt((gated**2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(norm(x, z), expected)


# mamba-ssm's Triton kernels multiply float32 operands in TF32 (Triton's tl.dot default: mantissas truncated to
# 10 bits). Measured on an H200 (mamba-ssm 2.3.2.post1, Triton 3.6, torch 2.11): for L = 20, P = N = 64 the
# kernel's output differed from the float64 reference by at most 0.18908 (1.7e-3 of the output's largest
# magnitude, 114) -- to all printed digits what truncating the operands of eq. 9's two matrix products to TF32
# gives on a CPU; that emulation puts every gradient within 1.9e-3 of its scale. A semantic mistake (D, the
# group of a head, the decay) is off by the scale itself, so the tolerance is a fraction of the scale.
TF32_TOLERANCE = 5e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for mamba-ssm's kernel")
def test_ssd_auto_cuda_matches_recurrent():
    pytest.importorskip("mamba_ssm", reason="mamba-ssm is not installed")
    assert ssd_module._mamba_kernel() is not None
    for length in (20, 100):
        inputs = make_inputs(length, H=8, G=2, P=64, N=64, seed=length)
        y64 = ssd_recurrent(*inputs)
        inputs_cuda = [t.float().cuda() for t in inputs]
        y = ssd(*inputs_cuda, chunk_size=32, mode="auto")
        torch.testing.assert_close(y.double().cpu(), y64, rtol=1e-3, atol=TF32_TOLERANCE * y64.abs().max().item())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for mamba-ssm's kernel")
def test_ssd_auto_cuda_gradients_match_quadratic():
    """Training runs the kernel's backward pass: its gradients for every input match the pure-PyTorch form's."""
    pytest.importorskip("mamba_ssm", reason="mamba-ssm is not installed")
    for length in (20, 100):
        inputs = make_inputs(length, H=8, G=2, P=16, N=16, seed=length)
        weight = torch.randn(*inputs[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

        def gradients(mode, device, dtype):
            leaves = [t.detach().to(device, dtype).clone().requires_grad_() for t in inputs]
            y = ssd(*leaves, chunk_size=32, mode=mode)
            (y * weight.to(device, dtype)).sum().backward()
            return [t.grad.double().cpu() for t in leaves]

        expected = gradients("quadratic", "cpu", torch.float64)
        for name, got, want in zip(("x", "dt", "A", "B", "C", "D"), gradients("auto", "cuda", torch.float32), expected):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=TF32_TOLERANCE * want.abs().max().item(),
                                       msg=f"d{name}, L = {length}")
