r"""MMM4Rec: transfer-efficient multi-modal sequential recommendation with time-aware SSD.

Fan et al., "Towards Transfer-Efficient Multi-modal Sequential Recommendation with State Space
Duality", arXiv 2506.02916. Specification: DESIGN.md §2-§4. Items are represented by frozen,
precomputed text and image features (``data/features.py``), adapted to the hidden size (eq. 2),
optionally with a per-item bias (the "with ID" variant). Text and image sequences are aligned by a
shared TiSSD and fused by TiCoSSD driven by Fourier-filtered time signals; the user vector scores
every item by its adapted, L2-normalised features (eq. 19), with cross-entropy over all items (eq. 21).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_mmm4rec.layers.time import MaskedSequenceNorm, time_differences
from recbole_mmm4rec.layers.tissd import MMM4RecLayer

from recbole_mmm4rec.data.dataset import MODALITIES


class ModalityAdapter(nn.Module):
    """Eq. 2: a linear map d_m -> D of a modality's frozen features, plus the optional item-modality
    bias E_m[i] (with-ID variant, zero-initialised). Items lacking the modality get a learned
    "missing" vector instead of the adapted (zero) feature row.

    features [n_items, d_m] and present [n_items] are buffers, not parameters: they come from the
    dataset and are not saved in checkpoints.
    """

    def __init__(self, features, present, hidden_size, item_bias):
        super().__init__()
        self.register_buffer("features", features, persistent=False)
        self.register_buffer("present", present, persistent=False)
        self.linear = nn.Linear(features.shape[1], hidden_size)
        self.missing = nn.Parameter(torch.zeros(hidden_size))
        self.item_bias = nn.Embedding(features.shape[0], hidden_size) if item_bias else None

    def forward(self, items):
        """items: any shape of item ids -> [*items.shape, D]."""
        adapted = torch.where(
            self.present[items].unsqueeze(-1), self.linear(self.features[items]), self.missing
        )
        if self.item_bias is not None:
            adapted = adapted + self.item_bias(items)
        return adapted


class MMM4Rec(SequentialRecommender):
    r"""MMM4Rec as a RecBole sequential recommender (reads ``item_id_list``, ``item_length`` and
    ``timestamp_list``; needs ``train_neg_sample_args: ~`` and a dataset with item features)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        check_config(config)
        self.hidden_size = config["hidden_size"]
        self.temperature = config["temperature"]
        self.time_aware = config["time_aware"]
        self.TIME_SEQ = config["TIME_FIELD"] + config["LIST_SUFFIX"]

        features = dataset.item_features  # modality -> (table [n_items, d_m], present [n_items])
        self.adapters = nn.ModuleDict({
            m: ModalityAdapter(*features[m], self.hidden_size, config["item_modality_bias"]) for m in MODALITIES
        })
        self.input_norms = nn.ModuleDict({
            m: nn.LayerNorm(self.hidden_size, eps=config["norm_eps"]) for m in MODALITIES
        })
        self.embedding_dropout = nn.Dropout(config["embedding_dropout_prob"])
        if self.time_aware:
            self.time_dropout = nn.Dropout(config["time_dropout_prob"])
            self.time_norm = MaskedSequenceNorm(self.max_seq_length, config["norm_eps"])
        self.layers = nn.ModuleList(MMM4RecLayer(config) for _ in range(config["num_layers"]))
        self.n_heads = self.layers[0].tissd.n_heads
        self.loss_fct = nn.CrossEntropyLoss()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        """N(0, 0.02) linear weights, zero biases and item-bias tables, unit LayerNorms (as the authors)."""
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=0.02)
            module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def _time_signal(self, timestamps, mask):
        """Eq. 5 and the time normalisation: timestamps [B, L] -> [B, H, L] per text/image stream."""
        delta = time_differences(timestamps, mask)  # [B, L]
        signals = []
        for _ in MODALITIES:  # independent dropout masks per stream, as the authors
            d = self.time_norm(self.time_dropout(delta).unsqueeze(1), mask)  # [B, 1, L]
            signals.append(d.expand(-1, self.n_heads, -1))
        return signals

    def forward(self, item_seq, item_seq_len, timestamps):
        mask = torch.arange(item_seq.shape[1], device=item_seq.device) < item_seq_len.unsqueeze(1)  # [B, L]
        text, image = (
            self.input_norms[m](self.embedding_dropout(self.adapters[m](item_seq))) for m in MODALITIES
        )  # [B, L, D]
        delta_text, delta_image = self._time_signal(timestamps, mask) if self.time_aware else (None, None)
        for layer in self.layers:
            text, image, delta_text, delta_image = layer(text, image, delta_text, delta_image, mask)
        return self.gather_indexes(image, item_seq_len - 1)  # [B, D]: the fused stream, last real item

    def item_embeddings(self, items=None):
        """Eq. 19's candidate side: L2-normalised adapted features per modality, [n, D] each."""
        if items is None:
            items = torch.arange(self.n_items, device=self.adapters["text"].features.device)
        return [F.normalize(self.adapters[m](items), dim=-1) for m in MODALITIES]

    def _user_vector(self, interaction):
        return self.forward(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], interaction[self.TIME_SEQ]
        )

    def calculate_loss(self, interaction):
        """Eq. 21: cross-entropy over all items."""
        logits = self._score_all(self._user_vector(interaction))
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def _score_all(self, user):
        text, image = self.item_embeddings()
        return (user @ text.T + user @ image.T) / self.temperature  # [B, n_items]

    def predict(self, interaction):
        user = self._user_vector(interaction)
        text, image = self.item_embeddings(interaction[self.ITEM_ID])  # [B, D]
        return ((user * text).sum(-1) + (user * image).sum(-1)) / self.temperature

    def full_sort_predict(self, interaction):
        return self._score_all(self._user_vector(interaction))


def check_config(config):
    """Fail early, naming the key, on values the layers cannot be built from."""
    hidden, expand, head_dim = config["hidden_size"], config["expand"], config["head_dim"]
    if (hidden * expand) % head_dim:
        raise ValueError(
            f"MMM4Rec: hidden_size * expand = {hidden * expand} is not divisible by head_dim = {head_dim}"
        )
    n_heads = hidden * expand // head_dim
    if n_heads % config["n_groups"]:
        raise ValueError(f"MMM4Rec: n_groups = {config['n_groups']} must divide the number of heads {n_heads}")
    if not config["temperature"] or config["temperature"] <= 0:
        raise ValueError(f"MMM4Rec: temperature must be > 0, got {config['temperature']}")
    if config["ssd_mode"] not in ("auto", "quadratic", "chunked"):
        raise ValueError(f"MMM4Rec: ssd_mode must be auto, quadratic or chunked, got {config['ssd_mode']!r}")
    for key in ("embedding_dropout_prob", "hidden_dropout_prob", "time_dropout_prob"):
        if not 0 <= config[key] < 1:
            raise ValueError(f"MMM4Rec: {key} must be in [0, 1), got {config[key]}")
