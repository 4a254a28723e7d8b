r"""Task-aware retrieval of an item's token features (TAME, ``../shared/TAME_DESIGN.md`` §2).

One retriever per modality turns an item's token sequence (text tokens, image patches; [CLS] first) into a
few d-dimensional vectors, guided by the item's ID embedding. Both retrievers here map a whole item table at
once: ``(id_embeddings [N, D], tokens [N, T, d_m], mask [N, T])`` -> :class:`Retrieval`, so a model runs
them once per training step or evaluation batch and indexes the result for its sequences.

Items without the modality (``mask`` all False, the padding item 0 included) see one learned "missing"
token instead: never a zero row, and never a softmax over no key at all.
"""

from typing import NamedTuple, Optional

import torch
import torch.nn as nn


class Retrieval(NamedTuple):
    vectors: torch.Tensor  # [N, N_q, D]: the retrieved vectors of every item (Ê_i^m)
    aggregated: torch.Tensor  # [N, D]: their gated sum (ê_i^m, eqs. 7-8)
    attention: Optional[torch.Tensor] = None  # [N, h, N_q, 1 + T] cross-attention weights, when asked


class TokenCrossAttention(nn.Module):
    r"""Multi-head attention of D-dim queries over an item's d_m-dim tokens, keys and values projected d_m -> D:
    ``nn.MultiheadAttention(D, h, kdim=d_m, vdim=d_m)``'s numbers (tests/test_tame.py compares the two), plus
    one learned "missing" token for the items without tokens (``mask`` all False, the padding item 0 too).

    An absent item attends to the missing token alone (N(0, 0.02), never a zero row, never a softmax over no
    key); a present item never sees it. The missing token's key and value are projected once, not prepended to
    the [N, T, d_m] token table (which would copy it every step).
    """

    def __init__(self, hidden_size, feature_dim, n_heads, dropout_prob):
        super().__init__()
        self.n_heads, self.head_size = n_heads, hidden_size // n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(feature_dim, hidden_size)
        self.value = nn.Linear(feature_dim, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.missing = nn.Parameter(torch.empty(feature_dim).normal_(0.0, 0.02))
        self.dropout = nn.Dropout(dropout_prob)

    def forward(self, queries, tokens, mask):
        """queries [N, Q, D], tokens [N, T, d_m], mask [N, T] (True = real token)
        -> (outputs [N, Q, D], weights [N, h, Q, 1 + T]; key 0 is the missing token)."""
        n, n_queries, _ = queries.shape
        h, dh, n_tokens = self.n_heads, self.head_size, tokens.shape[1]
        q = self.query(queries).view(n, n_queries, h, dh).transpose(1, 2) / dh ** 0.5  # [N, h, Q, dh]
        k = self.key(tokens).view(n, n_tokens, h, dh).transpose(1, 2)  # [N, h, T, dh]
        v = self.value(tokens).view(n, n_tokens, h, dh).transpose(1, 2)  # [N, h, T, dh]
        k_missing, v_missing = self.key(self.missing).view(h, dh, 1), self.value(self.missing).view(h, 1, dh)
        scores = torch.cat([q @ k_missing, q @ k.transpose(-1, -2)], dim=-1)  # [N, h, Q, 1 + T]
        key_mask = torch.cat([~mask.any(dim=1, keepdim=True), mask], dim=1)  # [N, 1 + T]
        weights = scores.masked_fill(~key_mask[:, None, None, :], float("-inf")).softmax(dim=-1)
        dropped = self.dropout(weights)
        context = dropped[..., :1] * v_missing + dropped[..., 1:] @ v  # [N, h, Q, dh]
        outputs = self.out(context.transpose(1, 2).reshape(n, n_queries, h * dh))  # [N, Q, D]
        return outputs, weights


class QueryRetriever(nn.Module):
    r"""Learnable ID-aware queries that cross-attend to an item's tokens (eqs. 2-8), one post-norm layer.

    - H_i = [Q; e_i^id] ([N_q + 1, D]); self-attention, residual, LayerNorm; keep the N_q query rows (eqs. 3-4).
    - Cross-attention of those rows over the item's tokens, keys/values projected d_m -> D
      (``kdim = vdim = d_m``, the Q-Former convention), padded tokens masked; residual, LayerNorm (eq. 5).
    - FFN D -> 4D -> D with GELU, residual, LayerNorm (the unprinted eq. 6): Ê_i ([N_q, D]).
    - Gate g_i = concat(Ê_i) W_g + b_g ([N_q], eq. 7), ê_i = sum_j g_ij ê_ij (eq. 8); as printed (no
      softmax) unless ``gate_softmax``.
    """

    def __init__(self, hidden_size, feature_dim, n_queries, n_heads, dropout_prob, layer_norm_eps, gate_softmax):
        super().__init__()
        self.queries = nn.Parameter(torch.empty(n_queries, hidden_size).normal_(0.0, 0.02))  # Q^m
        self.self_attention = nn.MultiheadAttention(hidden_size, n_heads, dropout=dropout_prob, batch_first=True)
        self.cross_attention = TokenCrossAttention(hidden_size, feature_dim, n_heads, dropout_prob)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, 4 * hidden_size), nn.GELU(), nn.Dropout(dropout_prob),
                                 nn.Linear(4 * hidden_size, hidden_size))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size, eps=layer_norm_eps) for _ in range(3))
        self.dropout = nn.Dropout(dropout_prob)
        self.gate = nn.Linear(n_queries * hidden_size, n_queries)  # W_g^m, b_g^m
        self.gate_softmax = gate_softmax

    @property
    def n_vectors(self):
        return self.queries.shape[0]

    def forward(self, id_embeddings, tokens, mask, need_weights=False):
        """id_embeddings [N, D], tokens [N, T, d_m], mask [N, T] (True = real token) -> Retrieval."""
        n_items, n_queries = id_embeddings.shape[0], self.n_vectors
        h = torch.cat([self.queries.expand(n_items, -1, -1), id_embeddings.unsqueeze(1)], dim=1)  # [N, N_q+1, D]
        attended, _ = self.self_attention(h, h, h, need_weights=False)
        queries = self.norms[0](h + self.dropout(attended))[:, :n_queries]  # [N, N_q, D], ID row dropped (eq. 4)
        retrieved, weights = self.cross_attention(queries, tokens, mask)  # [N, N_q, D], [N, h, N_q, 1+T]
        queries = self.norms[1](queries + self.dropout(retrieved))  # [N, N_q, D]
        vectors = self.norms[2](queries + self.dropout(self.ffn(queries)))  # [N, N_q, D]
        gate = self.gate(vectors.flatten(1))  # [N, N_q]
        if self.gate_softmax:
            gate = gate.softmax(dim=-1)
        aggregated = (gate.unsqueeze(-1) * vectors).sum(dim=1)  # [N, D]
        return Retrieval(vectors, aggregated, weights if need_weights else None)


class FirstTokenMLP(nn.Module):
    """The "w/o modality retriever" ablation: an MLP d_m -> D -> D (GELU) over each item's first ([CLS]) token
    vector, or over the learned missing token for an item without the modality. One vector per item."""

    def __init__(self, hidden_size, feature_dim, dropout_prob):
        super().__init__()
        self.missing = nn.Parameter(torch.empty(feature_dim).normal_(0.0, 0.02))
        self.mlp = nn.Sequential(nn.Linear(feature_dim, hidden_size), nn.GELU(), nn.Dropout(dropout_prob),
                                 nn.Linear(hidden_size, hidden_size))

    @property
    def n_vectors(self):
        return 1

    def forward(self, id_embeddings, tokens, mask, need_weights=False):
        """Same signature as QueryRetriever (``id_embeddings`` unused) -> Retrieval with N_q = 1."""
        first = torch.where(mask[:, :1], tokens[:, 0], self.missing)  # [CLS], or the missing token: [N, d_m]
        aggregated = self.mlp(first)  # [N, D]
        return Retrieval(aggregated.unsqueeze(1), aggregated)
