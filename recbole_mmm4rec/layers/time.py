"""The time path of MMM4Rec: masked time differences, time-aware step size, dual-channel Fourier filter.

A time signal is a tensor [B, H, L] (one row per SSD head) that lives on the L history positions.
Unlike the content path it is not causal: linear maps and the FFT run across L, which is legitimate
because the whole history is past. Padding must not leak, so every time signal is kept at zero on
padded positions (``mask`` False) and normalised over real positions only (DESIGN.md §8).
"""

import torch
import torch.nn as nn

from recbole_mmm4rec.layers.ssd import CausalConv1d


def time_differences(timestamps, mask):
    """MMM4Rec eq. 5: delta_1 = 0, delta_k = tau_k - tau_{k-1} on real positions, 0 on padding.

    timestamps [B, L] (RecBole's ``timestamp_list``, right-padded with 0), mask [B, L] bool.
    """
    timestamps = timestamps.float()
    delta = torch.zeros_like(timestamps)  # [B, L]
    delta[:, 1:] = timestamps[:, 1:] - timestamps[:, :-1]
    return delta * mask


class MaskedSequenceNorm(nn.Module):
    """LayerNorm across the L positions of a time signal (the paper's LN_L), over real positions only.

    x [B, H, L], mask [B, L] -> [B, H, L], zero on padded positions. Affine weight and bias per position.
    """

    def __init__(self, max_len, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(max_len))
        self.bias = nn.Parameter(torch.zeros(max_len))
        self.eps = eps

    def forward(self, x, mask):
        mask = mask.unsqueeze(1).to(x.dtype)  # [B, 1, L]
        count = mask.sum(-1, keepdim=True)  # [B, 1, 1]
        mean = (x * mask).sum(-1, keepdim=True) / count
        var = ((x - mean) ** 2 * mask).sum(-1, keepdim=True) / count
        x = (x - mean) / torch.sqrt(var + self.eps)
        return (x * self.weight + self.bias) * mask


class TimeAwareStep(nn.Module):
    """Time-aware step size (MMM4Rec eqs. 3-4, after TiM4Rec): the multiplier of the SSD's dt.

    s = tanhshrink(W2 silu(W1 delta)) with W1, W2 linear maps over the L axis;
    delta_c = silu(conv2(silu(conv1(delta * s)))) with depthwise causal convs over time, one per head.
    delta [B, H, L] -> delta_c [B, H, L].
    """

    def __init__(self, n_heads, max_len, d_conv, dropout):
        super().__init__()
        self.scale = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(max_len, max_len),
            nn.SiLU(),
            nn.Linear(max_len, max_len),
            nn.Tanhshrink(),
        )
        self.conv1 = CausalConv1d(n_heads, d_conv)
        self.conv2 = CausalConv1d(n_heads, d_conv)

    def forward(self, delta):
        g = (delta * self.scale(delta)).transpose(1, 2)  # [B, L, H]
        return self.conv2(self.conv1(g)).transpose(1, 2)  # [B, H, L]


class TimeGate(nn.Module):
    """The time signal a TiSSD hands on: delta' = LN_L(g * delta + (1 - g) * delta_c), g = sigmoid(linear_L(delta))."""

    def __init__(self, max_len, dropout, eps):
        super().__init__()
        self.gate = nn.Sequential(nn.Dropout(dropout), nn.Linear(max_len, 1), nn.Sigmoid())
        self.norm = MaskedSequenceNorm(max_len, eps)

    def forward(self, delta, delta_c, mask):
        g = self.gate(delta)  # [B, H, 1]
        return self.norm(g * delta + (1 - g) * delta_c, mask)


class ComplexLinear(nn.Module):
    """(W_r + i W_i)(x_r + i x_i) over the frequency axis, from two real linear layers."""

    def __init__(self, n_freq):
        super().__init__()
        self.real = nn.Linear(n_freq, n_freq)
        self.imag = nn.Linear(n_freq, n_freq)

    def forward(self, x):
        real = self.real(x.real) - self.imag(x.imag)
        imag = self.imag(x.real) + self.real(x.imag)
        return torch.complex(real, imag)


class DualChannelFourierFilter(nn.Module):
    """MMM4Rec eqs. 12-15: fuse the text and image time signals in the frequency domain.

    F_m = rFFT_L(delta_m); F'_m = CLinear_m(F_m) * F_m (an input-dependent kernel per channel);
    delta_co = irFFT_L(CLinear_co(F'_t + F'_v)). Inputs and output [B, H, L], zero on padding.
    """

    def __init__(self, max_len):
        super().__init__()
        n_freq = max_len // 2 + 1
        self.max_len = max_len
        self.text_kernel = ComplexLinear(n_freq)
        self.image_kernel = ComplexLinear(n_freq)
        self.fuse = ComplexLinear(n_freq)

    def forward(self, delta_text, delta_image, mask):
        spec_text = torch.fft.rfft(delta_text, norm="ortho")  # [B, H, L//2+1]
        spec_image = torch.fft.rfft(delta_image, norm="ortho")
        fused = self.text_kernel(spec_text) * spec_text + self.image_kernel(spec_image) * spec_image
        delta_co = torch.fft.irfft(self.fuse(fused), n=self.max_len, norm="ortho")  # [B, H, L]
        return delta_co * mask.unsqueeze(1)
