"""State Space Duality (SSD): the sequence mixer of MMM4Rec's TiSSD and TiCoSSD blocks.

MMM4Rec paper (Fan et al., arXiv 2506.02916), eqs. 7-9, which are Mamba-2's SSD (Dao & Gu, ICML 2024):

    eq. 7 (ZOH):    a_k = A * dt_k                                  (A < 0 per head, dt > 0)
    eq. 8 (mask):   L[l, s] = exp(a_{s+1} + ... + a_l)  for s <= l,  0 otherwise
    eq. 9 (output): y_l = sum_{s <= l} (C_l . B_s) L[l, s] dt_s x_s + D * x_l

Three forms compute the same function:
    ssd_quadratic   eq. 9 as written, a masked "attention" product,      O(L^2 N) per head
    ssd_chunked     Mamba-2's chunked form (quadratic inside a chunk,
                    state recurrence between chunks),                    O(L N P) per head
    ssd_recurrent   the step recurrence  h_l = exp(a_l) h_{l-1} + dt_l x_l B_l^T,
                    y_l = h_l C_l + D * x_l  (a python loop; the test oracle)

D skip: D multiplies the RAW input x_l. The authors' kernel multiplies the dt-scaled input dt_l x_l; we
follow Mamba-2, so that mamba-ssm's fused kernel (used on CUDA by `ssd`) computes the same function.

Shapes: B batch, L length, H heads, P head dim, G groups, N state size. Heads share B and C within a
group: head h reads group h // (H // G) (G divides H).
    x [B, L, H, P]   dt [B, L, H] (already positive)   A [H] (negative)
    B, C [B, L, G, N]   D [H]   ->   y [B, L, H, P]
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

SSD_MODES = ("auto", "quadratic", "chunked")


def segsum(x):
    """Segment sums: out[..., i, j] = x[..., j+1] + ... + x[..., i] for j <= i, -inf for j > i.

    Stable: a masked cumulative sum of x repeated along a new axis, not a difference of cumsums.
    x [..., T] -> [..., T, T]
    """
    T = x.size(-1)
    x = x.unsqueeze(-1).expand(*x.shape, T)  # [..., T(k), T(j)]
    strictly_below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1)
    x = x.masked_fill(~strictly_below, 0)  # keep x[k] for k > j
    x_segsum = torch.cumsum(x, dim=-2)  # [..., T(i), T(j)]: sum over j < k <= i
    on_or_below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=0)
    return x_segsum.masked_fill(~on_or_below, -torch.inf)


def _per_head(BC, H):
    """Repeat each group's B or C for the heads that share it: [B, L, G, N] -> [B, L, H, N]."""
    return BC if BC.size(2) == H else BC.repeat_interleave(H // BC.size(2), dim=2)


def ssd_quadratic(x, dt, A, B, C, D):
    """Eq. 9 in its quadratic masked ("attention") form; O(L^2 N) per head.

    y_l = sum_{s <= l} (C_l . B_s) exp(sum_{k=s+1..l} A dt_k) dt_s x_s + D * x_l.
    D multiplies the raw input x (the authors' kernel multiplies the dt-scaled input; we follow Mamba-2).
    """
    H = x.size(2)
    B, C = _per_head(B, H), _per_head(C, H)  # [B, L, H, N]
    mask = torch.exp(segsum((A * dt).transpose(1, 2)))  # [B, H, L(l), L(s)]   eq. 8
    scores = torch.einsum("blhn,bshn->bhls", C, B)  # [B, H, L, L]
    y = torch.einsum("bhls,bshp->blhp", scores * mask, x * dt.unsqueeze(-1))  # [B, L, H, P]
    return y + D[:, None] * x


def ssd_chunked(x, dt, A, B, C, D, chunk_size):
    """Eq. 9 in Mamba-2's chunked form; O(L N P) per head, same result as `ssd_quadratic`.

    The length is cut into chunks of `chunk_size` (the tail is padded with dt = 0 and zeros, which adds
    nothing to the state, and cut off the output):
      1. inside each chunk, the quadratic form;
      2. each chunk's final state, from its own inputs only;
      3. a recurrence over chunk states, giving the state entering each chunk;
      4. that incoming state, decayed to each position and read out by C.
    D multiplies the raw input x (the authors' kernel multiplies the dt-scaled input; we follow Mamba-2).
    """
    batch, length, H, P = x.shape
    pad = -length % chunk_size
    skip = D[:, None] * x  # [B, L, H, P]
    x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    n_chunks = (length + pad) // chunk_size

    def chunks(t):  # [B, L, ...] -> [B, c, l, ...]  (c chunks of l = chunk_size positions)
        return t.reshape(batch, n_chunks, chunk_size, *t.shape[2:])

    X = chunks(x * dt.unsqueeze(-1))  # [B, c, l, H, P]   dt-scaled input
    B, C = chunks(_per_head(B, H)), chunks(_per_head(C, H))  # [B, c, l, H, N]
    a = chunks(A * dt).permute(0, 3, 1, 2)  # [B, H, c, l]
    a_cumsum = torch.cumsum(a, dim=-1)  # [B, H, c, l]

    # 1. intra-chunk outputs (diagonal blocks)
    mask = torch.exp(segsum(a))  # [B, H, c, l, s]
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, mask, X)

    # 2. state at the end of each chunk from that chunk's inputs
    decay_to_end = torch.exp(a_cumsum[..., -1:] - a_cumsum)  # [B, H, c, l]
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_to_end, X)  # [B, c, H, P, N]

    # 3. inter-chunk recurrence: state entering chunk z = sum_{c < z} decay(c -> z) states[c]
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)  # [B, c+1, H, P, N]
    decay_chunk = torch.exp(segsum(F.pad(a_cumsum[..., -1], (1, 0))))  # [B, H, c+1, c+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)[:, :-1]  # [B, c, H, P, N]

    # 4. incoming state -> output, decayed to each position of the chunk
    decay_from_start = torch.exp(a_cumsum)  # [B, H, c, l]
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, decay_from_start)

    y = (y_diag + y_off).reshape(batch, n_chunks * chunk_size, H, P)[:, :length]  # [B, L, H, P]
    return y + skip


def ssd_recurrent(x, dt, A, B, C, D):
    """Eq. 9 as a step recurrence, one position at a time (the test oracle):

    h_l = exp(A dt_l) h_{l-1} + dt_l x_l B_l^T,   y_l = h_l C_l + D * x_l.   h [B, H, P, N]
    """
    batch, length, H, P = x.shape
    B, C = _per_head(B, H), _per_head(C, H)  # [B, L, H, N]
    decay = torch.exp(A * dt)  # [B, L, H]
    h = x.new_zeros(batch, H, P, B.size(-1))  # [B, H, P, N]
    ys = []
    for l in range(length):
        h = decay[:, l, :, None, None] * h + torch.einsum(
            "bh,bhp,bhn->bhpn", dt[:, l], x[:, l], B[:, l]
        )
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, l]))  # [B, H, P]
    return torch.stack(ys, dim=1) + D[:, None] * x  # [B, L, H, P]


@functools.lru_cache(maxsize=None)
def _mamba_kernel():
    """mamba-ssm's fused chunked SSD kernel, or None when mamba-ssm is not installed (looked up once)."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        return None
    return mamba_chunk_scan_combined


def ssd(x, dt, A, B, C, D, chunk_size, mode="auto"):
    """Eq. 9 by the form named in `mode` (config key `ssd_mode`): "quadratic", "chunked" or "auto".

    "auto": on CUDA with mamba-ssm installed, mamba-ssm's fused kernel (`mamba_chunk_scan_combined`, given
    the already-positive dt, so no dt_bias and no softplus there); otherwise the quadratic form when
    L <= chunk_size and the chunked form beyond. The quadratic form costs O(L^2 N) per head and the chunked
    O(L N P); for short histories (L = 20) the quadratic form is the faster one on CPU.
    The kernel multiplies float32 in TF32 (Triton's default): it agrees with the pure-PyTorch forms to about
    2e-3 of the output's scale (measured on an H200; tests/test_ssd.py), not to float32 rounding. Set
    `ssd_mode` to "quadratic" or "chunked" for the exact float32 result on CUDA.
    """
    if mode not in SSD_MODES:
        raise ValueError(f"ssd_mode must be one of {SSD_MODES}, got {mode!r}")
    if mode == "auto":
        if x.is_cuda and _mamba_kernel() is not None:
            return _mamba_kernel()(x, dt, A, B, C, chunk_size, D=D)
        mode = "quadratic" if x.size(1) <= chunk_size else "chunked"
    if mode == "quadratic":
        return ssd_quadratic(x, dt, A, B, C, D)
    return ssd_chunked(x, dt, A, B, C, D, chunk_size)


class GatedRMSNorm(nn.Module):
    """Gated RMSNorm as in Mamba-2: rmsnorm(x * silu(z)) * weight (gate before the norm, one group).

    x, z [..., dim] -> [..., dim]
    """

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x, z):
        x = x * F.silu(z)
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight
