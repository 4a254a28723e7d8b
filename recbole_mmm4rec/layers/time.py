"""The time path of MMM4Rec: masked time differences, time-aware step size, dual-channel Fourier filter.

A time signal is a tensor [B, H, L] (one row per SSD head) that lives on the L history positions.
Unlike the content path it is not causal: linear maps and the FFT run across L, which is legitimate
because the whole history is past. Padding must not leak, so every time signal is kept at zero on
padded positions (``mask`` False) and normalised over real positions only (DESIGN.md §8).
"""

import torch
import torch.nn as nn

from recbole_mmm4rec.layers.conv import CausalConv1d


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


TIME_SCALE_ACTIVATIONS = ("tanhshrink", "none")
TIME_PATHS = ("live", "paper")


class TimeAwareStep(nn.Module):
    """Time-aware step size (MMM4Rec eqs. 3-4, after TiM4Rec): the multiplier of the SSD's dt.

    s = act(W2 silu(W1 delta)) with W1, W2 linear maps over the L axis and act = tanhshrink (MMM4Rec's
    eq. 3) or the identity (``activation="none"``: TiM4Rec's time-scale MLP has no final activation);
    delta_c = silu(conv2(silu(conv1(delta * s)))) with depthwise causal convs over time, one per head.
    delta [B, H, L] -> delta_c [B, H, L].
    """

    def __init__(self, n_heads, max_len, d_conv, dropout, activation):
        super().__init__()
        if activation not in TIME_SCALE_ACTIVATIONS:
            raise ValueError(f"time_scale_activation must be one of {TIME_SCALE_ACTIVATIONS}, got {activation!r}")
        self.scale = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(max_len, max_len),
            nn.SiLU(),
            nn.Linear(max_len, max_len),
            nn.Tanhshrink() if activation == "tanhshrink" else nn.Identity(),
        )
        self.conv1 = CausalConv1d(n_heads, d_conv)
        self.conv2 = CausalConv1d(n_heads, d_conv)

    def live_init(self):
        """``time_path: live``: W1 ~ N(0, 1/L) gives W1 delta unit scale for a normalised delta, and
        W2 ~ N(0, 4/L) puts W2 silu(.) at a std of about 1.2, where tanhshrink(v) = v - tanh(v) has slope
        tanh(v)^2 ~ 0.5 instead of ~1e-5 at the authors' N(0, 0.02) (v ~ 4e-3 there, see DESIGN.md §8)."""
        first, last = self.scale[1], self.scale[3]
        nn.init.normal_(first.weight, std=first.in_features ** -0.5)
        nn.init.normal_(last.weight, std=2 * last.in_features ** -0.5)
        nn.init.zeros_(first.bias)
        nn.init.zeros_(last.bias)

    def forward(self, delta):
        g = (delta * self.scale(delta)).transpose(1, 2)  # [B, L, H]
        return self.conv2(self.conv1(g)).transpose(1, 2)  # [B, H, L]


def init_time_path(module, scheme):
    """Set up every time-path layer inside ``module`` by ``scheme`` (the ``time_path`` key), after the
    model's N(0, 0.02) initialisation.

    ``paper``: keep N(0, 0.02) and the model's weight decay, as the authors' code. The time path then
    barely learns: tanhshrink is flat at the origin, and what gradient is left is far below the coupled
    L2 term weight_decay * weight, so NAdam only shrinks it (README "The time path").
    ``live``: every layer's ``live_init`` (TimeAwareStep, DualChannelFourierFilter, and a time-aware TiSSD /
    TiCoSSD: its dt projection) and every time-path parameter marked ``exempt_from_weight_decay`` (read by
    ``trainers.parameter_groups``). The time path acts on the SSD only through dt = softplus(dt_raw * delta_c
    + dt_bias): with dt_raw from N(0, 0.02) weights (~0.1) it can barely move dt, and its gradient is far too
    small to outweigh a coupled L2 term.
    """
    if scheme not in TIME_PATHS:
        raise ValueError(f"time_path must be one of {TIME_PATHS}, got {scheme!r}")
    if scheme == "paper":
        return
    for layer in module.modules():
        if hasattr(layer, "live_init"):  # TimeAwareStep, DualChannelFourierFilter, time-aware TiSSD / TiCoSSD
            layer.live_init()
        if isinstance(layer, TIME_LAYERS):
            for param in layer.parameters():
                param.exempt_from_weight_decay = True


class TimeGate(nn.Module):
    """The time signal a TiSSD hands on: delta' = LN_L(g * delta + (1 - g) * delta_c), g = sigmoid(linear_L(delta)).

    One gate per head (Linear L -> 1, MMM4Rec), or with ``per_position`` one per position (Linear L -> L,
    TiM4Rec's ``p2p_residual``).
    """

    def __init__(self, max_len, dropout, eps, per_position=False):
        super().__init__()
        self.gate = nn.Sequential(nn.Dropout(dropout), nn.Linear(max_len, max_len if per_position else 1), nn.Sigmoid())
        self.norm = MaskedSequenceNorm(max_len, eps)

    def forward(self, delta, delta_c, mask):
        g = self.gate(delta)  # [B, H, 1], or [B, H, L] per position
        return self.norm(g * delta + (1 - g) * delta_c, mask)


class ComplexLinear(nn.Module):
    """(W_r + i W_i)(x_r + i x_i) over the frequency axis, from two real linear layers."""

    def __init__(self, n_freq):
        super().__init__()
        self.real = nn.Linear(n_freq, n_freq)
        self.imag = nn.Linear(n_freq, n_freq)

    def set_bias(self, value):
        """Make the complex bias b equal ``value`` (real): the layer adds (b_r - b_i) + i (b_r + b_i)."""
        nn.init.constant_(self.real.bias, value / 2)
        nn.init.constant_(self.imag.bias, -value / 2)

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

    def live_init(self):
        """``time_path: live``: the filter starts as the identity, delta_co = delta_t + delta_v. Each kernel
        K_m = CLinear_m(F_m) starts at 1 + N(0, 0.02) F_m (complex bias 1) and the fusing layer at the identity
        matrix; at the authors' N(0, 0.02) with zero biases delta_co is ~1e-3 of its inputs."""
        for kernel in (self.text_kernel, self.image_kernel):
            kernel.set_bias(1.0)
        nn.init.eye_(self.fuse.real.weight)
        nn.init.zeros_(self.fuse.imag.weight)
        self.fuse.set_bias(0.0)

    def forward(self, delta_text, delta_image, mask):
        spec_text = torch.fft.rfft(delta_text, norm="ortho")  # [B, H, L//2+1]
        spec_image = torch.fft.rfft(delta_image, norm="ortho")
        fused = self.text_kernel(spec_text) * spec_text + self.image_kernel(spec_image) * spec_image
        delta_co = torch.fft.irfft(self.fuse(fused), n=self.max_len, norm="ortho")  # [B, H, L]
        return delta_co * mask.unsqueeze(1)


# Every module of the time path (what ``init_time_path`` exempts from weight decay under ``live``).
TIME_LAYERS = (MaskedSequenceNorm, TimeAwareStep, TimeGate, DualChannelFourierFilter)
