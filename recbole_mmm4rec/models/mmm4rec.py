r"""MMM4Rec: transfer-efficient multi-modal sequential recommendation with time-aware SSD.

Fan et al., "Towards Transfer-Efficient Multi-modal Sequential Recommendation with State Space
Duality", arXiv 2506.02916. Specification: DESIGN.md §2-§4. Items are represented by frozen,
precomputed text and image features (``data/features.py``), adapted to the hidden size (eq. 2),
optionally with a per-item bias (the "with ID" variant). Text and image sequences are aligned by a
shared TiSSD and fused by TiCoSSD driven by Fourier-filtered time signals; the user vector scores
every item by its adapted, L2-normalised features (eq. 19), with cross-entropy over all items (eq. 21).

The model is split along what transfers (DESIGN.md §6):
``MMM4RecEncoder`` holds every domain-independent weight (adapters, layers, norms) and
``ItemTable`` one domain's items (frozen features and the optional item-modality bias).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_mmm4rec.data.dataset import MODALITIES
from recbole_mmm4rec.layers.adapters import ItemTable, ModalityAdapter
from recbole_mmm4rec.layers.config import (check_tissd_config, require_bool, require_positive_int,
                                           require_positive_number, require_probability)
from recbole_mmm4rec.layers.in_batch import in_batch_cross_entropy
from recbole_mmm4rec.layers.time import MaskedSequenceNorm, init_time_path, time_differences
from recbole_mmm4rec.layers.tissd import MMM4RecLayer


class MMM4RecEncoder(nn.Module):
    """Everything of MMM4Rec that does not depend on the item set: what pre-training transfers."""

    def __init__(self, config, feature_dims):
        super().__init__()
        hidden = config["hidden_size"]
        self.adapters = nn.ModuleDict({m: ModalityAdapter(feature_dims[m], hidden) for m in MODALITIES})
        self.input_norms = nn.ModuleDict({m: nn.LayerNorm(hidden, eps=config["norm_eps"]) for m in MODALITIES})
        self.embedding_dropout = nn.Dropout(config["embedding_dropout_prob"])
        self.time_aware = config["time_aware"]
        if self.time_aware:
            self.time_dropout = nn.Dropout(config["time_dropout_prob"])
            self.time_norm = MaskedSequenceNorm(config["MAX_ITEM_LIST_LENGTH"], config["norm_eps"])
        self.layers = nn.ModuleList(MMM4RecLayer(config) for _ in range(config["num_layers"]))
        self.n_heads = self.layers[0].tissd.n_heads
        self.temperature = config["temperature"]
        self.apply(self._init_weights)
        init_time_path(self, config["time_path"])

    @staticmethod
    def _init_weights(module):
        """N(0, 0.02) linear weights, zero biases, unit LayerNorms (as the authors)."""
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=0.02)
            module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def _time_signals(self, timestamps, mask):
        """Eq. 5 and the masked time normalisation: timestamps [B, L] -> one [B, H, L] per stream."""
        delta = time_differences(timestamps, mask)  # [B, L]
        signals = []
        for _ in MODALITIES:  # independent dropout masks per stream, as the authors
            d = self.time_norm(self.time_dropout(delta).unsqueeze(1), mask)  # [B, 1, L]
            signals.append(d.expand(-1, self.n_heads, -1))
        return signals

    def adapted_items(self, tables):
        """Eq. 2 for every item, once per step: tables (modality -> ItemTable) -> modality -> [n_items, D]."""
        return {m: self.adapters[m](tables[m]) for m in MODALITIES}

    def user_vector(self, adapted, item_seq, item_seq_len, timestamps):
        """adapted: ``adapted_items``; item_seq, timestamps [B, L]; item_seq_len [B] -> [B, D].

        Rows are looked up with ``F.embedding``, whose backward sums repeated items in a fixed order; plain
        indexing accumulates them with parallel atomic adds on CPU, so a run would not repeat bit for bit."""
        mask = torch.arange(item_seq.shape[1], device=item_seq.device) < item_seq_len.unsqueeze(1)  # [B, L]
        text, image = (
            self.input_norms[m](self.embedding_dropout(F.embedding(item_seq, adapted[m]))) for m in MODALITIES
        )  # [B, L, D]
        deltas = self._time_signals(timestamps, mask) if self.time_aware else (None, None)
        for layer in self.layers:
            text, image, *deltas = layer(text, image, *deltas, mask)
        last = (item_seq_len - 1).view(-1, 1, 1).expand(-1, 1, image.shape[-1])
        return image.gather(1, last).squeeze(1)  # [B, D]: the fused stream at the last real item

    def item_embeddings(self, adapted, items=None):
        """Eq. 19's candidate side: L2-normalised adapted vectors per modality, of every item [n_items, D]
        or of ``items`` [*items.shape, D]."""
        return [F.normalize(adapted[m] if items is None else F.embedding(items, adapted[m]), dim=-1)
                for m in MODALITIES]

    def scores(self, user, item_embeddings):
        """(<u, e_text> + <u, e_image>) / temperature, as one matmul <u, e_text + e_image> / temperature:
        user [B, D], embeddings [n, D] each -> [B, n]."""
        text, image = item_embeddings
        return user @ (text + image).T / self.temperature


def item_tables(dataset, config):
    """modality -> ItemTable of a dataset with ``item_features`` (MultiModalSequentialDataset)."""
    return nn.ModuleDict({
        m: ItemTable(*dataset.item_features[m], config["hidden_size"], config["item_modality_bias"])
        for m in MODALITIES
    })


class MMM4Rec(SequentialRecommender):
    r"""MMM4Rec as a RecBole sequential recommender (reads ``item_id_list``, ``item_length`` and
    ``timestamp_list``; needs ``train_neg_sample_args: ~`` and a dataset with item features)."""

    # The hyperparameters the encoder's weights depend on: stored with a pre-trained checkpoint.
    ENCODER_KEYS = ("hidden_size", "inner_size", "num_layers", "d_state", "d_conv", "expand", "head_dim",
                    "n_groups", "MAX_ITEM_LIST_LENGTH", "time_aware", "time_scale_activation", "p2p_residual")

    @staticmethod
    def check_config(config):
        check_config(config)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.check_config(config)
        self.TIME_SEQ = config["TIME_FIELD"] + config["LIST_SUFFIX"]
        self.items = item_tables(dataset, config)
        self.feature_dims = {m: table.features.shape[1] for m, table in self.items.items()}
        self.encoder = MMM4RecEncoder(config, self.feature_dims)
        self.loss_fct = nn.CrossEntropyLoss()

    def forward(self, item_seq, item_seq_len, timestamps):
        return self.encoder.user_vector(self.encoder.adapted_items(self.items), item_seq, item_seq_len, timestamps)

    def _user_and_items(self, interaction):
        """The user vectors [B, D] and this step's adapted items (``MMM4RecEncoder.adapted_items``)."""
        adapted = self.encoder.adapted_items(self.items)
        user = self.encoder.user_vector(
            adapted, interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], interaction[self.TIME_SEQ]
        )
        return user, adapted

    def calculate_loss(self, interaction):
        """Eq. 21: cross-entropy over all items. The padding item 0 is no candidate (as in RecBole's
        full-sort evaluation; the authors' code keeps it)."""
        user, adapted = self._user_and_items(interaction)
        logits = self.encoder.scores(user, self.encoder.item_embeddings(adapted))  # [B, n_items]
        logits[:, 0] = float("-inf")
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def calculate_in_batch_loss(self, interaction):
        """Eq. 20, the pre-training loss: cross-entropy of each sequence against the targets of the batch.

        logits [B, B] = scores of every user vector against every target of the batch; label = the diagonal.
        A target that appears more than once in the batch is not a negative for the sequences whose own
        target it is: those duplicate columns are masked out (-inf), so no sequence is pushed away from
        its true next item.
        """
        targets = interaction[self.POS_ITEM_ID]  # [B]
        user, adapted = self._user_and_items(interaction)  # [B, D]
        text, image = self.encoder.item_embeddings(adapted, targets)  # [B, D] each
        return in_batch_cross_entropy(user, text + image, targets, self.encoder.temperature)

    def predict(self, interaction):
        user, adapted = self._user_and_items(interaction)
        text, image = self.encoder.item_embeddings(adapted, interaction[self.ITEM_ID])  # [B, D]
        return (user * (text + image)).sum(-1) / self.encoder.temperature

    def full_sort_predict(self, interaction):
        user, adapted = self._user_and_items(interaction)
        return self.encoder.scores(user, self.encoder.item_embeddings(adapted))


def check_config(config):
    """Fail early, naming the key, on values the layers cannot be built from."""
    name = "MMM4Rec"
    require_positive_int(config, name, "hidden_size", "inner_size", "num_layers", "expand")
    require_positive_number(config, name, "temperature", "norm_eps")
    require_probability(config, name, "embedding_dropout_prob", "hidden_dropout_prob")
    require_bool(config, name, "item_modality_bias")
    check_tissd_config(config, name)
