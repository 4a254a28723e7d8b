r"""UniSRec: universal, text-based sequence representations that transfer across domains.

Hou et al., "Towards Universal Sequence Representation Learning for Recommender Systems", KDD 2022.
An item is its frozen text feature x_i (here: the ``text`` table of the feature file) through a
mixture-of-experts adapter of parametric-whitening experts (``MoEAdapter``); a SASRec-style Transformer
reads the sequence and its output at the last real item, L2-normalised, is the sequence representation
s. Items are scored by cosine similarity over a temperature τ:

    whitening     x~_i^(k) = (x_i - b_k) W_k                               (k = 1..G experts)
    MoE adapter   v_i = Σ_k g_k x~_i^(k),  g = softmax(x_i W_g + δ),  δ = ε · (softplus(x_i W_n) + 0.01),
                  ε ~ N(0, 1) in training, δ = 0 in evaluation
    input         f_j = v_{i_j} + p_j   (+ e_{i_j}, the item ID embedding, in the transductive setting)
    score         P(i | s) = softmax_i(cos(s, v_i) / τ)                  (v_i + e_i when transductive)

Settings (``train_stage``, the authors' names): ``inductive_ft`` — text only ("T"); ``transductive_ft``
— text + item ID embedding ("T+ID"); ``pretrain`` — the pre-training objectives (text only):

    L_PT = ℓ_S-I + λ ℓ_S-S,
    ℓ_S-I = -log exp(cos(s_j, v_j)/τ) / Σ_j' exp(cos(s_j, v_j')/τ)       (sequence-item, in-batch)
    ℓ_S-S = -log exp(cos(s_j, s~_j)/τ) / Σ_j' exp(cos(s_j, s~_j')/τ)     (sequence-sequence, in-batch)

where s~_j encodes an item-drop view of the same sequence. Fine-tuning (``pretrained``) loads the
pre-trained ``encoder``; with ``fix_encoder`` the position embeddings and the Transformer stay fixed and
only the MoE adapter, the input LayerNorm and (transductive) the ID embeddings train, as the paper's
parameter-efficient fine-tuning and the authors' ``finetune.py``.

As MMM4Rec, the model is split along what transfers: ``UniSRecEncoder`` holds every domain-independent
weight; ``items`` (an ``ItemTable``) one domain's text features and, transductive, its ID embeddings.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.utils import InputType

from recbole_mmm4rec.layers.config import (require_bool, require_choice, require_divides, require_positive_int,
                                           require_positive_number, require_probability)
from recbole_mmm4rec.layers.adapters import ItemTable
from recbole_mmm4rec.layers.in_batch import in_batch_cross_entropy

TRAIN_STAGES = ("pretrain", "inductive_ft", "transductive_ft")
NOISE_FLOOR = 0.01  # added to the gate's noise scale softplus(x W_n), as in the authors' code


class ParametricWhitening(nn.Module):
    """One expert: x~ = (x - b) W with a learned shift b [d] and projection W [d, D] (no further bias).
    Adaptor dropout acts on the features before the shift, as the authors."""

    def __init__(self, feature_dim, hidden_size, dropout_prob):
        super().__init__()
        self.dropout = nn.Dropout(dropout_prob)
        self.shift = nn.Parameter(torch.zeros(feature_dim))
        self.projection = nn.Linear(feature_dim, hidden_size, bias=False)

    def forward(self, features):
        """features [*, d] -> [*, D]"""
        return self.projection(self.dropout(features) - self.shift)


class MoEAdapter(nn.Module):
    """v = Σ_k g_k (x - b_k) W_k over G whitening experts, g = softmax(x W_g + δ). In training the gate is
    noisy: δ = ε · (softplus(x W_n) + 0.01), ε ~ N(0, 1); in evaluation δ = 0. W_g, W_n start at zero
    (uniform gate), as the authors."""

    def __init__(self, feature_dim, hidden_size, n_experts, dropout_prob):
        super().__init__()
        self.experts = nn.ModuleList(
            ParametricWhitening(feature_dim, hidden_size, dropout_prob) for _ in range(n_experts)
        )
        self.gate = nn.Parameter(torch.zeros(feature_dim, n_experts))  # W_g
        self.noise = nn.Parameter(torch.zeros(feature_dim, n_experts))  # W_n

    def gates(self, features):
        """features [*, d] -> g [*, G]"""
        logits = features @ self.gate  # [*, G]
        if self.training:
            scale = F.softplus(features @ self.noise) + NOISE_FLOOR  # [*, G]
            logits = logits + torch.randn_like(logits) * scale
        return logits.softmax(dim=-1)

    def forward(self, features):
        """features [*, d] -> v [*, D]"""
        experts = torch.stack([expert(features) for expert in self.experts], dim=-2)  # [*, G, D]
        return (self.gates(features).unsqueeze(-1) * experts).sum(dim=-2)


class UniSRecEncoder(nn.Module):
    """Everything of UniSRec that does not depend on the item set (what pre-training transfers): the MoE
    adapter, the position embeddings, the input LayerNorm and the Transformer (RecBole's, as SASRec)."""

    def __init__(self, config, feature_dim):
        super().__init__()
        hidden = config["hidden_size"]
        self.initializer_range = config["initializer_range"]
        self.adapter = MoEAdapter(feature_dim, hidden, config["n_exps"], config["adaptor_dropout_prob"])
        self.position_embedding = nn.Embedding(config["MAX_ITEM_LIST_LENGTH"], hidden)
        self.layer_norm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.transformer = TransformerEncoder(
            n_layers=config["n_layers"],
            n_heads=config["n_heads"],
            hidden_size=hidden,
            inner_size=config["inner_size"],
            hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"],
            hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"],
        )
        self.apply(self._init_weights)

    def _init_weights(self, module):
        """SASRec's initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorms."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


def item_drop(item_seq, item_seq_len, ratio):
    """The augmented view of ℓ_S-S: every real item is dropped with probability ``ratio`` (the first one
    is always kept, as the authors); the kept items keep their order, left-aligned with zero padding as
    RecBole's sequences. item_seq [B, L], item_seq_len [B] -> (item_seq [B, L], item_seq_len [B])."""
    positions = torch.arange(item_seq.shape[1], device=item_seq.device)  # [L]
    keep = (positions < item_seq_len.unsqueeze(1)) & (torch.rand(item_seq.shape, device=item_seq.device) >= ratio)
    keep[:, 0] = True  # [B, L]
    kept_first = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # [B, L]
    length = keep.sum(dim=1)  # [B]
    return item_seq.gather(1, kept_first).masked_fill(positions >= length.unsqueeze(1), 0), length


class UniSRec(SequentialRecommender):
    r"""UniSRec as a RecBole sequential recommender (reads ``item_id_list``, ``item_length``; needs
    ``train_neg_sample_args: ~`` and a dataset with a ``text`` feature table for every item)."""

    input_type = InputType.POINTWISE  # cross-entropy over all items, no sampled negatives

    # The hyperparameters the encoder's weights depend on: stored with a pre-trained checkpoint.
    ENCODER_KEYS = ("hidden_size", "inner_size", "n_layers", "n_heads", "hidden_act", "n_exps",
                    "MAX_ITEM_LIST_LENGTH")

    @staticmethod
    def check_config(config):
        check_config(config)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.check_config(config)
        self.train_stage = config["train_stage"]
        self.temperature = config["temperature"]
        self.seq_seq_weight = config["lambda"]  # λ
        self.item_drop_ratio = config["item_drop_ratio"]

        features, present = dataset.item_features["text"]
        if not present[1:].all():
            missing = int((~present[1:]).sum())
            raise ValueError(f"UniSRec: {missing} items have no text features; every item needs one")
        self.feature_dims = {"text": features.shape[1]}
        transductive = self.train_stage == "transductive_ft"
        self.items = ItemTable(features, present, config["hidden_size"], item_bias=transductive)
        if transductive:  # the item ID embeddings e_i, initialised as SASRec's (the authors')
            self.items.bias.weight.data.normal_(mean=0.0, std=config["initializer_range"])
        self.encoder = UniSRecEncoder(config, features.shape[1])
        if config["pretrained"] and config["fix_encoder"]:
            self.encoder.position_embedding.requires_grad_(False)
            self.encoder.transformer.requires_grad_(False)
        self.loss_fct = nn.CrossEntropyLoss()

    def item_embeddings(self, items):
        """v_i (+ e_i when transductive): items of any shape -> [*items.shape, D].

        The adapter runs once per distinct item (a batch's B·L positions hold far fewer items), so in
        training an item's gate noise and adaptor dropout are drawn once per step, not per occurrence as
        in the authors' code; in evaluation both are off and the two are identical."""
        distinct, position = torch.unique(items, return_inverse=True)  # [n], [*items.shape]
        adapted = self.encoder.adapter(self.items.features[distinct])[position]  # [*items.shape, D]
        return adapted if self.items.bias is None else adapted + self.items.bias(items)

    def forward(self, item_seq, item_seq_len):
        """s: the Transformer's output at the last real item, L2-normalised. item_seq [B, L] -> [B, D]."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)  # [L]
        inputs = self.item_embeddings(item_seq) + self.encoder.position_embedding(positions)  # [B, L, D]
        inputs = self.encoder.dropout(self.encoder.layer_norm(inputs))
        mask = self.get_attention_mask(item_seq)  # [B, 1, L, L]: causal, padding masked
        output = self.encoder.transformer(inputs, mask, output_all_encoded_layers=False)[-1]  # [B, L, D]
        return F.normalize(self.gather_indexes(output, item_seq_len - 1), dim=-1)

    def _all_items(self):
        """Every item's normalised embedding [n_items, D] (item 0 is padding; RecBole masks it)."""
        return F.normalize(self.item_embeddings(torch.arange(self.n_items, device=self.items.features.device)), dim=-1)

    def pretraining_losses(self, interaction):
        """(ℓ_S-I, ℓ_S-S) of a batch, with in-batch negatives. Sequences of the batch that share the next
        item are not negatives of each other in either term."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        targets = interaction[self.POS_ITEM_ID]  # [B]
        sequences = self.forward(item_seq, item_seq_len)  # [B, D]
        items = F.normalize(self.item_embeddings(targets), dim=-1)  # [B, D]
        views = self.forward(*item_drop(item_seq, item_seq_len, self.item_drop_ratio))  # [B, D]
        seq_item = in_batch_cross_entropy(sequences, items, targets, self.temperature)
        seq_seq = in_batch_cross_entropy(sequences, views, targets, self.temperature)
        return seq_item, seq_seq

    def calculate_in_batch_loss(self, interaction):
        """The pre-training loss L_PT = ℓ_S-I + λ ℓ_S-S (``trainers.Pretrainer`` calls it per batch)."""
        seq_item, seq_seq = self.pretraining_losses(interaction)
        return seq_item + self.seq_seq_weight * seq_seq

    def calculate_loss(self, interaction):
        """Fine-tuning: cross-entropy over all items of cos(s, v_i) / τ; ``train_stage: pretrain``: L_PT."""
        if self.train_stage == "pretrain":
            return self.calculate_in_batch_loss(interaction)
        return self.loss_fct(self.full_sort_predict(interaction), interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        sequences = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])  # [B, D]
        items = F.normalize(self.item_embeddings(interaction[self.ITEM_ID]), dim=-1)  # [B, D]
        return (sequences * items).sum(dim=-1) / self.temperature

    def full_sort_predict(self, interaction):
        sequences = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])  # [B, D]
        return sequences @ self._all_items().T / self.temperature  # [B, n_items]


def check_config(config):
    """Fail early, naming the key, on values the model cannot be built from."""
    name = "UniSRec"
    require_choice(config, name, "train_stage", TRAIN_STAGES)
    require_positive_int(config, name, "hidden_size", "inner_size", "n_layers", "n_heads", "n_exps")
    require_positive_number(config, name, "temperature", "layer_norm_eps", "initializer_range")
    require_probability(config, name, "item_drop_ratio", "adaptor_dropout_prob", "hidden_dropout_prob",
                        "attn_dropout_prob")
    require_bool(config, name, "fix_encoder")
    require_divides(config, name, "n_heads", config["hidden_size"], f"hidden_size = {config['hidden_size']}")
