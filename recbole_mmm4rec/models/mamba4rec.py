r"""Mamba4Rec: an ID-based sequential recommender on Mamba-1's selective SSM block.

Liu et al., "Mamba4Rec: Towards Efficient Sequential Recommendation with Selective State Space
Models", arXiv 2403.03900 (2024). Item ID embedding -> dropout -> LayerNorm -> ``num_layers`` blocks of
[Mamba block -> dropout -> residual LayerNorm -> FFN] -> the last real position -> dot product with the
(tied) item embedding table, cross-entropy over all items.

The SSM block is Mamba-1's (``layers/selective_scan.py``: in_proj, causal conv + SiLU, selective scan
with per-channel dt, N-dimensional A per channel, x-dependent B and C, D skip, gate silu(z), out_proj),
as the authors' code (mamba-ssm's ``Mamba``); on CUDA with mamba-ssm installed it runs mamba-ssm's fused
scan kernel. Weights as the authors' code: N(0, 0.02) linear and embedding weights, zero biases, PyTorch's
default conv init, A_log and D as Mamba-1.
Differences from the authors' code: dt_proj keeps Mamba-1's initialisation (the authors' blanket init
overwrites it with N(0, 0.02) and a zero bias, so every channel starts at dt = softplus(0) = 0.69 rather
than in [1e-3, 1e-1]); the FFN is ``layers.tissd.FeedForward`` (Hardswish, post-norm residual; theirs uses
GELU) with ``inner_size`` 4·D; the residual around the SSM block is always there (the authors' code drops
it when ``num_layers == 1``, their released setting); histories are 20 items long (this package's
protocol, ``overall.yaml``; the authors' config uses 50 on Amazon and 200 on MovieLens-1M).

``SSMRecommender`` is the skeleton shared with TiM4Rec (``models/tim4rec.py``): a model names its
block (``BLOCK``) and the keys the block reads (``LAYER_KEYS``); TiM4Rec also turns the time path on.
"""

import torch
import torch.nn as nn
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_mmm4rec.layers.config import (require_choice, require_positive_int, require_positive_number,
                                           require_probability)
from recbole_mmm4rec.layers.selective_scan import MambaBlock
from recbole_mmm4rec.layers.time import MaskedSequenceNorm, init_time_path, time_differences
from recbole_mmm4rec.layers.tissd import FeedForward

# The keys every layer reads (the residual LayerNorm and FeedForward), besides the block's LAYER_KEYS.
SHARED_LAYER_KEYS = ("hidden_size", "inner_size", "norm_eps")


class SSMLayer(nn.Module):
    """One block: h = LN(Dropout(SSM(x)) + x); out = FFN(h).

    x [B, L, D], delta [B, H, L] or None, mask [B, L] -> (out [B, L, D], delta' [B, H, L] or None).
    """

    def __init__(self, block, layer_config):
        super().__init__()
        self.ssm = block(layer_config)
        self.dropout = nn.Dropout(layer_config["hidden_dropout_prob"])
        self.norm = nn.LayerNorm(layer_config["hidden_size"], eps=layer_config["norm_eps"])
        self.ffn = FeedForward(layer_config)

    def forward(self, x, delta, mask):
        if delta is None:  # the block reads the content only (Mamba4Rec)
            out = self.ssm(x)
        else:  # the time-aware block also hands on the time signal (TiM4Rec)
            out, delta = self.ssm(x, delta, mask)
        return self.ffn(self.norm(self.dropout(out) + x)), delta


class SSMRecommender(SequentialRecommender):
    r"""ID embedding -> SSM layers -> last real position -> tied dot-product scores (CE over all items).

    Subclasses set ``BLOCK`` (the SSM block class, built from a dict of ``LAYER_KEYS``), ``LAYER_KEYS``
    and ``TIME_AWARE``: False reads only ``item_id_list`` and ``item_length``; True also reads RecBole's
    ``timestamp_list`` and threads the time signal through the layers.
    """

    BLOCK = None
    LAYER_KEYS = ()
    TIME_AWARE = False

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        name = type(self).__name__
        self.check_config(config)
        if self.TIME_AWARE and config["TIME_FIELD"] not in dataset.field2type:
            raise ValueError(
                f"{name} reads the history's timestamps: load_col.inter must include {config['TIME_FIELD']!r}"
            )
        self.TIME_SEQ = f"{config['TIME_FIELD']}{config['LIST_SUFFIX']}"
        layer_config = {key: config[key] for key in SHARED_LAYER_KEYS + self.LAYER_KEYS}
        layer_config["hidden_dropout_prob"] = config["dropout_prob"]
        hidden, eps = config["hidden_size"], config["norm_eps"]
        self.item_embedding = nn.Embedding(self.n_items, hidden, padding_idx=0)
        self.embedding_dropout = nn.Dropout(config["dropout_prob"])
        self.embedding_norm = nn.LayerNorm(hidden, eps=eps)
        depth = config["num_layers"]  # the last layer's time signal has no next layer: it builds no time gate
        self.layers = nn.ModuleList(SSMLayer(self.BLOCK, {**layer_config, "hands_on_time": i + 1 < depth})
                                    for i in range(depth))
        if self.TIME_AWARE:
            # The raw time differences get dropout_prob, as the authors' code (time_dropout_prob is the
            # dropout inside the time path, their time_drop_out).
            self.time_dropout = nn.Dropout(config["dropout_prob"])
            self.time_norm = MaskedSequenceNorm(config["MAX_ITEM_LIST_LENGTH"], eps)
            self.n_heads = self.layers[0].ssm.n_heads
        self.loss_fct = nn.CrossEntropyLoss()
        self.apply(self._init_weights)
        if self.TIME_AWARE:
            init_time_path(self, config["time_path"])

    @classmethod
    def check_config(cls, config):
        """Fail early, naming the key, on values the layers cannot be built from."""
        name = cls.__name__
        check_ssm_config(config, name)
        cls.check_block_config(config, name)
        if bool(config["time_aware"]) != cls.TIME_AWARE:
            raise ValueError(
                f"{name}: time_aware must be {cls.TIME_AWARE}, got {config['time_aware']} "
                "(Mamba4Rec is the SSM recommender without time, TiM4Rec the one with time)"
            )

    @classmethod
    def check_block_config(cls, config, name):
        """The block's own keys; subclasses check theirs."""

    @staticmethod
    def _init_weights(module):
        """N(0, 0.02) linear and embedding weights, zero biases (and padding row), unit LayerNorms."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        elif isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def _time_signal(self, timestamps, mask):
        """timestamps [B, L] -> masked, normalised time differences, one row per head: [B, H, L]."""
        delta = self.time_dropout(time_differences(timestamps, mask))  # [B, L], 0 on padding
        return self.time_norm(delta.unsqueeze(1), mask).expand(-1, self.n_heads, -1)  # [B, H, L]

    def forward(self, item_seq, item_seq_len, timestamps=None):
        """item_seq [B, L] (right-padded with 0), item_seq_len [B], timestamps [B, L] or None -> [B, D]."""
        mask = torch.arange(item_seq.shape[1], device=item_seq.device) < item_seq_len.unsqueeze(1)  # [B, L]
        x = self.embedding_norm(self.embedding_dropout(self.item_embedding(item_seq)))  # [B, L, D]
        delta = self._time_signal(timestamps, mask) if self.TIME_AWARE else None  # [B, H, L] or None
        for layer in self.layers:
            x, delta = layer(x, delta, mask)
        return self.gather_indexes(x, item_seq_len - 1)  # [B, D]: the last real position

    def _user_vector(self, interaction):
        timestamps = interaction[self.TIME_SEQ] if self.TIME_AWARE else None
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], timestamps)

    def calculate_loss(self, interaction):
        """Cross-entropy over all items: logits [B, n_items] = user [B, D] @ item table [n_items, D]^T."""
        logits = self._user_vector(interaction) @ self.item_embedding.weight.T
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        """Scores of the candidate items ``item_id`` [B] -> [B]."""
        user = self._user_vector(interaction)  # [B, D]
        return (user * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        """Scores of every item (id 0 included, as RecBole's models) -> [B, n_items]."""
        return self._user_vector(interaction) @ self.item_embedding.weight.T


class Mamba4Rec(SSMRecommender):
    r"""Mamba4Rec (Liu et al., 2024) as a RecBole sequential recommender, on Mamba-1's block. Reads
    ``item_id_list`` and ``item_length``; needs ``train_neg_sample_args: ~`` and ``loss_type: CE``."""

    BLOCK = MambaBlock
    LAYER_KEYS = ("expand", "d_state", "d_conv", "dt_rank")
    TIME_AWARE = False

    @classmethod
    def check_block_config(cls, config, name):
        dt_rank = config["dt_rank"]
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or isinstance(dt_rank, bool) or dt_rank < 1):
            raise ValueError(f"{name}: dt_rank must be 'auto' or a positive integer, got {dt_rank!r}")


def check_ssm_config(config, name):
    """Fail early, naming the key, on values every SSM recommender's layers need."""
    require_positive_int(config, name, "hidden_size", "inner_size", "expand", "d_state", "d_conv", "num_layers")
    require_positive_number(config, name, "norm_eps")
    require_probability(config, name, "dropout_prob")
    require_choice(config, name, "loss_type", ("CE",))
