r"""Mamba-1's selective scan (S6) and the Mamba block: the sequence mixer of Mamba4Rec.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", arXiv 2312.00752 (2023),
eqs. 2a-2b and 4 and Algorithm 2; the block of its Figure 3, which Mamba4Rec (Liu et al., arXiv
2403.03900) stacks. Every one of the E channels has its own N-dimensional diagonal state matrix A_e:

    eq. 4 (ZOH):    Abar_l = exp(dt_l A)          dt_l [E] > 0,  A [E, N] < 0
                    Bbar_l x_l = dt_l B_l x_l     (the simplified B of mamba-ssm's kernel and reference)
    eq. 2a:         h_l = Abar_l * h_{l-1} + Bbar_l x_l                        h [E, N]
    eq. 2b:         y_l = h_l C_l + D * x_l                                    B_l, C_l [N], all channels

Selection (Algorithm 2): B_l, C_l and dt_l are functions of x_l; dt through a rank-R bottleneck,
dt = softplus(W_dt (W_x x)_R + dt_bias) (``dt_rank`` R).

Two pure-PyTorch forms compute the same scan, both a loop over L of [B, E, N] state updates:
    selective_scan_recurrent   eqs. 4, 2a, 2b as written, differentiated by autograd (the test oracle)
    selective_scan_torch       the same forward in preallocated buffers and a hand-written backward
                               (the reverse-time recurrence): faster on CPU, half the memory kept for backward
Discretising all positions at once ([B, L, E, N] tensors for Abar and Bbar x) is about twice slower on
CPU than either: the loop's [B, E, N] working set stays in cache.
`selective_scan` calls mamba-ssm's fused CUDA kernel (``selective_scan_fn``) on CUDA tensors when mamba-ssm
is installed, `selective_scan_torch` otherwise.

Shapes: B batch, L length, E channels (expand * D), N state size, R dt rank.
    x, dt [B, L, E]   A [E, N]   B, C [B, L, N]   D [E]   ->   y [B, L, E]
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from recbole_mmm4rec.layers.conv import CausalConv1d


def selective_scan_recurrent(x, dt, A, B, C, D):
    """Eqs. 4, 2a, 2b step by step, discretising at each position (the test oracle)."""
    batch, length, channels = x.shape
    h = x.new_zeros(batch, channels, A.size(1))  # [B, E, N]
    ys = []
    for l in range(length):
        A_bar = torch.exp(dt[:, l, :, None] * A)  # [B, E, N]   eq. 4
        Bx_bar = (dt[:, l] * x[:, l])[:, :, None] * B[:, l, None, :]  # [B, E, N]
        h = A_bar * h + Bx_bar  # eq. 2a
        ys.append(torch.einsum("ben,bn->be", h, C[:, l]) + D * x[:, l])  # [B, E]   eq. 2b
    return torch.stack(ys, dim=1)  # [B, L, E]


class SelectiveScan(torch.autograd.Function):
    """The scan with a hand-written backward pass: a loop over L of [B, E, N] updates each way, keeping
    only the states h [L, B, E, N] for backward (autograd through the step loop keeps twice as much and is
    about 1.3x slower on CPU). Abar is recomputed in backward.

    Backward, the reverse-time recurrence of eqs. 2a-2b (g_l = dLoss/dh_l, dy_l = dLoss/dy_l):
        g_l = Abar_{l+1} * g_{l+1} + dy_l C_l^T
        dC_l = h_l^T dy_l     d(dt_l A) = g_l * h_{l-1} * Abar_l     d(dt_l x_l) = g_l B_l     dB_l = (dt_l x_l)^T g_l
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D):
        batch, length, channels = x.shape
        dtx = dt * x  # [B, L, E]
        states = x.new_empty(length, batch, channels, A.size(1))  # [L, B, E, N]
        y = x.new_empty(length, batch, channels)  # [L, B, E]
        h = x.new_zeros(batch, channels, A.size(1))  # [B, E, N]
        for l in range(length):
            A_bar = torch.exp(dt[:, l, :, None] * A)  # [B, E, N]   eq. 4
            h = torch.addcmul(dtx[:, l, :, None] * B[:, l, None, :], A_bar, h, out=states[l])  # eq. 2a
            torch.bmm(h, C[:, l, :, None], out=y[l, :, :, None])  # eq. 2b
        ctx.save_for_backward(x, dt, A, B, C, D, states)
        return y.transpose(0, 1) + D * x  # [B, L, E]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, dt, A, B, C, D, states = ctx.saved_tensors
        dtx = dt * x
        grad_dt, grad_dtx = torch.zeros_like(dt), torch.empty_like(x)  # [B, L, E]
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)  # [B, L, N]
        grad_A = torch.zeros_like(states[0])  # [B, E, N], summed over the batch at the end
        carry = torch.zeros_like(states[0])  # Abar_{l+1} * g_{l+1}
        for l in reversed(range(x.size(1))):
            g = torch.addcmul(carry, grad_y[:, l, :, None], C[:, l, None, :])  # [B, E, N]
            torch.bmm(grad_y[:, l, None, :], states[l], out=grad_C[:, l, None, :])
            A_bar = torch.exp(dt[:, l, :, None] * A)
            if l > 0:  # h_{-1} = 0: the first step's Abar gets no gradient
                grad_a = g * states[l - 1] * A_bar  # d(dt_l A)
                grad_dt[:, l] = (grad_a * A).sum(-1)
                grad_A.addcmul_(grad_a, dt[:, l, :, None])
            torch.bmm(g, B[:, l, :, None], out=grad_dtx[:, l, :, None])
            torch.bmm(dtx[:, l, None, :], g, out=grad_B[:, l, None, :])
            carry = g * A_bar
        grad_dt += grad_dtx * x
        return grad_dtx * dt + grad_y * D, grad_dt, grad_A.sum(0), grad_B, grad_C, (grad_y * x).sum((0, 1))


def selective_scan_torch(x, dt, A, B, C, D):
    """Eqs. 4, 2a, 2b in pure PyTorch (any device and dtype), with `SelectiveScan`'s backward pass."""
    return SelectiveScan.apply(x, dt, A, B, C, D)


@functools.lru_cache(maxsize=None)
def _mamba_kernel():
    """mamba-ssm's fused selective-scan CUDA kernel, or None when mamba-ssm is not installed (looked up once)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def selective_scan(x, dt, A, B, C, D):
    """The scan on CUDA by mamba-ssm's kernel when it is installed (given the already-positive dt, so no
    delta_bias and no softplus there; its [B, E, L] layout), else by `selective_scan_torch`."""
    if x.is_cuda and _mamba_kernel() is not None:
        y = _mamba_kernel()(
            x.transpose(1, 2).contiguous(),  # [B, E, L]
            dt.transpose(1, 2).contiguous(),
            A.float(),
            B.transpose(1, 2).contiguous(),  # [B, N, L]
            C.transpose(1, 2).contiguous(),
            D.float(),
        )
        return y.transpose(1, 2)  # [B, L, E]
    return selective_scan_torch(x, dt, A, B, C, D)


def resolve_dt_rank(dt_rank, d_model):
    """The ``dt_rank`` key: "auto" is Mamba-1's ceil(D / 16), else a positive int."""
    return math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank


class DtProjection(nn.Module):
    """dt = softplus(W_dt dt_low + dt_bias), R -> E (Algorithm 2, line 4), with Mamba-1's initialisation:
    W_dt ~ U[-R^-1/2, R^-1/2] and dt_bias = softplus^-1(dt0), dt0 log-uniform in [1e-3, 1e-1] (floor 1e-4).

    Its own module rather than an nn.Linear, so a model's blanket N(0, 0.02) Linear init leaves it as is.
    dt_low [B, L, R] -> dt [B, L, E] > 0.
    """

    def __init__(self, dt_rank, channels, dt_min=1e-3, dt_max=1e-1, dt_floor=1e-4):
        super().__init__()
        bound = dt_rank ** -0.5
        self.weight = nn.Parameter(torch.empty(channels, dt_rank).uniform_(-bound, bound))
        dt = torch.exp(torch.empty(channels).uniform_(math.log(dt_min), math.log(dt_max))).clamp(min=dt_floor)
        self.bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def forward(self, dt_low):
        return F.softplus(F.linear(dt_low, self.weight, self.bias))


class MambaBlock(nn.Module):
    """The Mamba-1 mixer (Gu & Dao, Figure 3 and Algorithm 2). x [B, L, D] -> [B, L, D]; causal.

    in_proj D -> [x (E), z (E)]; x <- silu(causal depthwise conv(x)); x_proj E -> [dt (R), B (N), C (N)];
    dt <- softplus(dt_proj(dt)); y = selective scan (eqs. 2a-2b, 4); out_proj(y * silu(z)).
    A = -exp(A_log) with the S4D-real init A_log[e] = log(1, ..., N) for every channel; D = 1.
    No biases in in_proj, x_proj and out_proj (Mamba-1's ``bias=False``); the conv has one.
    Config keys: hidden_size, expand, d_state, d_conv, dt_rank.
    """

    def __init__(self, config):
        super().__init__()
        d_model = config["hidden_size"]
        self.d_inner, self.d_state = config["expand"] * d_model, config["d_state"]
        self.dt_rank = resolve_dt_rank(config["dt_rank"], d_model)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv = CausalConv1d(self.d_inner, config["d_conv"])
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = DtProjection(self.dt_rank, self.d_inner)
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # [E, N]
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, hidden):
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # [B, L, E] each
        x = self.conv(x)  # causal conv + SiLU
        dt_low, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        y = selective_scan(x, self.dt_proj(dt_low), -torch.exp(self.A_log), B, C, self.D)  # [B, L, E]
        return self.out_proj(y * F.silu(z))
