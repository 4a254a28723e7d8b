"""TiSSD and TiCoSSD blocks and the MMM4Rec layer built from them.

TiSSD (MMM4Rec eqs. 3-9): a Mamba-2 SSD block whose step size dt is modulated by the time signal.
TiCoSSD (eqs. 16-17): the cross-modal SSD; x, B and dt come from the text stream u, C from the image
stream q, the gate z from q + u. ``MMM4RecLayer`` is one (alignment, fusion) pair of eqs. 10-17.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mmm4rec.layers.conv import CausalConv1d
from recbole_mmm4rec.layers.ssd import GatedRMSNorm, ssd
from recbole_mmm4rec.layers.time import DualChannelFourierFilter, TimeAwareStep, TimeGate


class SSDParameters(nn.Module):
    """Per-head SSD parameters with Mamba-2's initialisation: A ~ U[1, 16] (stored as log),
    dt_bias = softplus^-1(dt) with dt log-uniform in [1e-3, 1e-1], D = 1."""

    def __init__(self, n_heads, dt_min=1e-3, dt_max=1e-1):
        super().__init__()
        self.A_log = nn.Parameter(torch.log(torch.empty(n_heads).uniform_(1, 16)))
        dt = torch.exp(torch.empty(n_heads).uniform_(0, 1) * (torch.log(torch.tensor(dt_max / dt_min)))) * dt_min
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.D = nn.Parameter(torch.ones(n_heads))

    def discretise(self, dt_raw):
        """dt_raw [B, L, H] -> (dt [B, L, H] > 0, A [H] < 0), the ZOH step of eq. 7."""
        return F.softplus(dt_raw + self.dt_bias), -torch.exp(self.A_log)


class SSDMixer(nn.Module):
    """The part TiSSD and TiCoSSD share: discretise dt (eq. 7), the SSD (eqs. 8-9), gated RMSNorm, out_proj.

    Sizes: E = expand * D inner width, H = E / head_dim heads, G groups of N-dim B and C.
    """

    def __init__(self, config):
        super().__init__()
        self.d_inner = config["expand"] * config["hidden_size"]
        self.head_dim, self.d_state, self.n_groups = config["head_dim"], config["d_state"], config["n_groups"]
        self.n_heads = self.d_inner // self.head_dim
        self.chunk_size, self.ssd_mode = config["chunk_size"], config["ssd_mode"]
        self.params = SSDParameters(self.n_heads)
        self.norm = GatedRMSNorm(self.d_inner, config["norm_eps"])
        self.out_proj = nn.Linear(self.d_inner, config["hidden_size"])

    def forward(self, x, dt_raw, B, C, z):
        """x, z [B, L, E]; dt_raw [B, L, H]; B, C [B, L, G*N] -> [B, L, D]."""
        batch, length, _ = x.shape
        dt, A = self.params.discretise(dt_raw)
        y = ssd(
            x.view(batch, length, self.n_heads, self.head_dim),  # [B, L, H, P]
            dt, A,
            B.view(batch, length, self.n_groups, self.d_state),  # [B, L, G, N]
            C.view(batch, length, self.n_groups, self.d_state),
            self.params.D, self.chunk_size, self.ssd_mode,
        )
        return self.out_proj(self.norm(y.reshape(batch, length, self.d_inner), z))


def init_dt_rows(projection, n_heads):
    """N(0, 1/D) for the last ``n_heads`` output rows of ``projection`` (D -> [..., dt (H)]), the dt rows."""
    with torch.no_grad():
        projection.weight[-n_heads:].normal_(0.0, projection.in_features ** -0.5)


class TiSSD(nn.Module):
    """Time-aware SSD block (MMM4Rec eqs. 3-9).

    x [B, L, D], delta [B, H, L] (None when time is off), mask [B, L] ->
    (y [B, L, D], delta' [B, H, L] or None: also without time gate).
    in_proj D -> [z (E), x (E), B (G*N), C (G*N), dt (H)]; causal conv + SiLU over [x, B, C];
    dt <- dt * delta_c (time-aware); then the SSD mixer.
    """

    def __init__(self, config):
        super().__init__()
        self.mixer = SSDMixer(config)
        self.d_inner, self.n_heads = self.mixer.d_inner, self.mixer.n_heads
        self.bc_dim = self.mixer.n_groups * self.mixer.d_state
        self.in_proj = nn.Linear(config["hidden_size"], 2 * self.d_inner + 2 * self.bc_dim + self.n_heads)
        self.conv = CausalConv1d(self.d_inner + 2 * self.bc_dim, config["d_conv"])
        if config["time_aware"]:
            max_len, dropout = config["MAX_ITEM_LIST_LENGTH"], config["time_dropout_prob"]
            self.time_step = TimeAwareStep(
                self.n_heads, max_len, config["d_conv"], dropout, config["time_scale_activation"]
            )
            per_position = "p2p_residual" in config and bool(config["p2p_residual"])  # absent: False
            # TiM4Rec's last layer has no next layer to hand delta' to (``hands_on_time: False``): no gate
            hands_on = "hands_on_time" not in config or bool(config["hands_on_time"])  # absent: True
            self.time_gate = TimeGate(max_len, dropout, config["norm_eps"], per_position) if hands_on else None

    def forward(self, x, delta, mask):
        z, xbc, dt_raw = torch.split(
            self.in_proj(x), [self.d_inner, self.d_inner + 2 * self.bc_dim, self.n_heads], -1
        )
        x_ssm, B, C = torch.split(self.conv(xbc), [self.d_inner, self.bc_dim, self.bc_dim], -1)
        if delta is not None:
            delta_c = self.time_step(delta)  # [B, H, L]
            dt_raw = dt_raw * delta_c.transpose(1, 2)  # [B, L, H]
            delta = self.time_gate(delta, delta_c, mask) if self.time_gate is not None else None
        return self.mixer(x_ssm, dt_raw, B, C, z), delta


class TiCoSSD(nn.Module):
    """Time-aware cross-modal SSD (MMM4Rec eqs. 16-17).

    q (image stream) and u (text stream) [B, L, D], delta_co [B, H, L] or None -> [B, L, D].
    x, B, dt from u; C from q; gate z from q + u; separate causal convs for [x, B] and for C.
    """

    def __init__(self, config):
        super().__init__()
        d_model = config["hidden_size"]
        self.mixer = SSDMixer(config)
        self.d_inner, self.n_heads = self.mixer.d_inner, self.mixer.n_heads
        self.bc_dim = self.mixer.n_groups * self.mixer.d_state
        self.u_proj = nn.Linear(d_model, self.d_inner + self.bc_dim + self.n_heads)
        self.q_proj = nn.Linear(d_model, self.bc_dim)
        self.z_proj = nn.Linear(d_model, self.d_inner)
        self.conv_xb = CausalConv1d(self.d_inner + self.bc_dim, config["d_conv"])
        self.conv_c = CausalConv1d(self.bc_dim, config["d_conv"])
        if config["time_aware"]:
            self.time_step = TimeAwareStep(
                self.n_heads, config["MAX_ITEM_LIST_LENGTH"], config["d_conv"], config["time_dropout_prob"],
                config["time_scale_activation"],
            )

    def live_init(self):
        """``time_path: live``: dt's rows of u_proj at N(0, 1/D), as ``TiSSD.live_init``."""
        if hasattr(self, "time_step"):
            init_dt_rows(self.u_proj, self.n_heads)

    def forward(self, q, u, delta_co):
        xb, dt_raw = torch.split(self.u_proj(u), [self.d_inner + self.bc_dim, self.n_heads], -1)
        x_ssm, B = torch.split(self.conv_xb(xb), [self.d_inner, self.bc_dim], -1)
        C = self.conv_c(self.q_proj(q))  # [B, L, G*N]
        if delta_co is not None:
            dt_raw = dt_raw * self.time_step(delta_co).transpose(1, 2)
        return self.mixer(x_ssm, dt_raw, B, C, self.z_proj(q + u))


class FeedForward(nn.Module):
    """Position-wise FFN with post-norm residual: LN(x + Dropout(W2 Dropout(hardswish(W1 x))))."""

    def __init__(self, config):
        super().__init__()
        d_model, dropout = config["hidden_size"], config["hidden_dropout_prob"]
        self.net = nn.Sequential(
            nn.Linear(d_model, config["inner_size"]),
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(config["inner_size"], d_model),
            nn.Dropout(dropout),
        )
        self.norm = nn.LayerNorm(d_model, eps=config["norm_eps"])

    def forward(self, x):
        return self.norm(x + self.net(x))


class MMM4RecLayer(nn.Module):
    """One alignment + fusion pair (MMM4Rec eqs. 10-17).

    Alignment: ONE TiSSD block runs on both the text and the image sequence (shared weights: the
    sequence-level alignment constraint), each with its own residual LayerNorm; the text stream then
    goes through an FFN. Fusion: the two returned time signals are fused by the dual-channel Fourier
    filter; TiCoSSD(q = image, u = text) gives LN(Dropout(TiCoSSD) + q + u) and an FFN.
    text, image [B, L, D]; delta_text, delta_image [B, H, L] or None; mask [B, L].
    """

    def __init__(self, config):
        super().__init__()
        d_model, eps = config["hidden_size"], config["norm_eps"]
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.tissd = TiSSD(config)
        self.text_norm = nn.LayerNorm(d_model, eps=eps)
        self.text_ffn = FeedForward(config)
        self.image_norm = nn.LayerNorm(d_model, eps=eps)
        self.ticossd = TiCoSSD(config)
        self.fused_norm = nn.LayerNorm(d_model, eps=eps)
        self.fused_ffn = FeedForward(config)
        if config["time_aware"]:
            self.fourier = DualChannelFourierFilter(config["MAX_ITEM_LIST_LENGTH"])

    def forward(self, text, image, delta_text, delta_image, mask):
        out, delta_text = self.tissd(text, delta_text, mask)
        u = self.text_ffn(self.text_norm(self.dropout(out) + text))  # aligned text stream
        out, delta_image = self.tissd(image, delta_image, mask)  # the same block: shared weights
        q = self.image_norm(self.dropout(out) + image)
        delta_co = None if delta_text is None else self.fourier(delta_text, delta_image, mask)
        fused = self.fused_norm(self.dropout(self.ticossd(q, u, delta_co)) + q + u)
        return u, self.fused_ffn(fused), delta_text, delta_image
