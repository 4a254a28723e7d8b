"""In-batch contrastive cross-entropy: the pre-training loss of MMM4Rec (eq. 20) and UniSRec (ℓ_S-I, ℓ_S-S)
and TAME's ID contrastive term (eq. 16), once for all three."""

import torch
import torch.nn.functional as F

from recbole_mmm4rec import distributed


def in_batch_cross_entropy(queries, keys, targets, temperature=1.0):
    """Mean cross-entropy of each query against every key of the batch, its own key (same row) the label.

    queries [B, D], keys [B, D], targets [B] (the item each row's key stands for). A key whose target is
    also a row's own target is no negative for that row (masked out), so no sequence is pushed away from its
    true next item. logits [B, B] = queries @ keys.T / temperature.

    Under torchrun each rank holds its share of the global batch (``distributed.sharded``): the keys and
    targets of every rank are gathered with their gradient, so each query sees the whole batch's keys as in
    one process, and the loss of a share times its weight is that share's part of the one-process loss.
    """
    keys, all_targets = distributed.gather_batch(keys), distributed.gather_batch(targets)  # [N, D], [N]
    own = distributed.batch_positions(len(queries), queries.device)  # [B]: each row's column
    logits = queries @ keys.T / temperature  # [B, N]
    excluded = targets.unsqueeze(1) == all_targets.unsqueeze(0)  # [B, N]
    excluded[torch.arange(len(own), device=own.device), own] = False
    return F.cross_entropy(logits.masked_fill(excluded, float("-inf")), own)
