r"""TAME: task-aware query-based multi-modal retrieval for sequential recommendation.

"Enhancing Sequential Recommendation via Task-Aware Query-Based Multi-Modal Retrieval" (no public code);
``../shared/TAME_DESIGN.md`` is our specification, equation numbers are the paper's.

- Per modality (text, image), ID-aware learnable queries retrieve N_q vectors from the item's token
  features and a gate sums them (eqs. 2-8, ``layers/retrieval.py``).
- Modality-guided ID enrichment: a softmax gate over all retrieved vectors of an item mixes N_q
  element-wise expert scalings of its ID + position embedding (eqs. 9-12).
- Three causal Transformers (SASRec's input layer and RecBole's ``TransformerEncoder``, one position table
  each) over the ID, text and image sequences give r_u^id, r_u^t, r_u^v (eq. 13).
- Score y_ui = r^id . e_i^id + r^t . ê_i^t + r^v . ê_i^v (eq. 14); loss = CE over all items (eq. 15)
  + ``cl_weight`` * in-batch InfoNCE in the ID space (eq. 16).

Everything on the item side depends on the item alone, so it is computed for the whole item table once per
training step (the CE needs every candidate) or evaluation batch, and sequences index that table.
"""

from numbers import Real
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder

from recbole_mmm4rec.data.tokens import load_item_tokens
from recbole_mmm4rec.layers.config import (require_bool, require_choice, require_divides, require_positive_int,
                                           require_positive_number, require_probability)
from recbole_mmm4rec.layers.in_batch import in_batch_cross_entropy
from recbole_mmm4rec.layers.retrieval import FirstTokenMLP, QueryRetriever

MODALITIES = ("text", "image")
ACTIVATIONS = ("gelu", "relu", "swish", "tanh", "sigmoid")  # RecBole's TransformerEncoder's hidden_act


class ItemSide(NamedTuple):
    """Every item's representations for one step (row 0 = padding item)."""

    ids: torch.Tensor  # [n_items, D]: e_i^id
    modalities: dict  # modality -> [n_items, D]: ê_i^m (eq. 8)
    scale: Optional[torch.Tensor]  # [n_items, D]: the enrichment sum_k g_k w_k (eqs. 10-12), None when off


class IDEnrichment(nn.Module):
    r"""Eqs. 10-12: g = softmax(z W_g + b_g) over N_q experts from z = concat of an item's retrieved vectors
    ([N_q D]); x̂ = sum_k g_k (w_k ⊙ x) = x ⊙ (g @ W). The gate depends on the item alone, so the per-item
    scale g @ W is computed for the item table and multiplied into the sequence."""

    def __init__(self, n_vectors, hidden_size):
        super().__init__()
        self.gate = nn.Linear(n_vectors * hidden_size, n_vectors)
        self.experts = nn.Parameter(torch.ones(n_vectors, hidden_size))  # w^{id,k}, initialised to ones

    def forward(self, vectors):
        """vectors [N, N_q, D] -> per-item scale [N, D]."""
        gate = self.gate(vectors.flatten(1)).softmax(dim=-1)  # [N, N_q]
        return gate @ self.experts  # [N, D]


class SequenceEncoder(nn.Module):
    """One of the three encoders of eq. 13: own positions, LayerNorm and dropout (SASRec's input layer),
    then RecBole's causal ``TransformerEncoder``."""

    def __init__(self, config, max_seq_length):
        super().__init__()
        hidden_size = config["hidden_size"]
        self.position_embedding = nn.Embedding(max_seq_length, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.transformer = TransformerEncoder(
            n_layers=config["n_layers"], n_heads=config["n_heads"], hidden_size=hidden_size,
            inner_size=config["inner_size"], hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"], hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"],
        )

    def add_positions(self, items):
        """items [B, L, D] -> items + p_l."""
        return items + self.position_embedding.weight[: items.shape[1]]

    def forward(self, inputs, attention_mask):
        """inputs [B, L, D] (positions added), attention_mask [B, 1, L, L] -> states [B, L, D]."""
        hidden = self.dropout(self.LayerNorm(inputs))
        return self.transformer(hidden, attention_mask, output_all_encoded_layers=False)[-1]


def in_batch_infonce(users, targets, target_ids, temperature):
    """Eq. 16: InfoNCE of cos(r_u^id, e_target^id) / temperature against the other targets of the batch.

    users [B, D], targets [B, D] (the targets' ID embeddings), target_ids [B]. A target that appears more than
    once in the batch is no negative for the other sequences whose target it also is (masked out).
    """
    return in_batch_cross_entropy(F.normalize(users, dim=-1), F.normalize(targets, dim=-1), target_ids, temperature)


def make_retriever(config, modality, feature_dim):
    """The configured retriever of one modality (``retriever: query`` the paper's, ``mlp`` the ablation)."""
    if config["retriever"] == "mlp":
        return FirstTokenMLP(config["hidden_size"], feature_dim, config["retriever_dropout_prob"])
    return QueryRetriever(config["hidden_size"], feature_dim, config[f"{modality}_queries"],
                          config[f"{modality}_heads"], config["retriever_dropout_prob"], config["layer_norm_eps"],
                          config["gate_softmax"])


class TAME(SequentialRecommender):
    r"""TAME as a RecBole sequential recommender (CE, ``train_neg_sample_args: ~``). Item token features
    come from ``<dataset>.tokens.npz`` (``data/tokens.py``; text tokens are built when missing)."""

    @staticmethod
    def check_config(config):
        """Fail early, naming the key, on values the layers cannot be built from."""
        name = "TAME"
        require_positive_int(config, name, "hidden_size", "inner_size", "n_layers", "n_heads", "text_queries",
                             "image_queries", "text_heads", "image_heads", "max_text_tokens")
        require_positive_number(config, name, "layer_norm_eps", "initializer_range", "cl_temperature")
        require_probability(config, name, "hidden_dropout_prob", "attn_dropout_prob", "retriever_dropout_prob")
        require_bool(config, name, "gate_softmax", "id_enrichment", "use_text", "use_image")
        require_choice(config, name, "retriever", ("query", "mlp"))
        require_choice(config, name, "loss_type", ("CE",))
        require_choice(config, name, "hidden_act", ACTIVATIONS)
        hidden = f"hidden_size = {config['hidden_size']}"
        for key in ("n_heads", "text_heads", "image_heads"):
            require_divides(config, name, key, config["hidden_size"], hidden)
        weight = config["cl_weight"]
        if not isinstance(weight, Real) or isinstance(weight, bool) or weight < 0:
            raise ValueError(f"{name}: cl_weight must be a number >= 0 (0 = no contrastive loss), got {weight!r}")
        if not (config["use_text"] or config["use_image"]):
            raise ValueError(f"{name}: use_text and use_image are both False: TAME needs at least one modality "
                             "(without any, it is SASRec: --model=SASRec)")
        dims = config["token_dims"]
        valid = lambda m, v: m in MODALITIES and isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
        if dims is not None and (not isinstance(dims, dict) or not all(valid(m, v) for m, v in dims.items())):
            raise ValueError(f"{name}: token_dims must be a mapping of {' / '.join(MODALITIES)} to positive "
                             f"integers (e.g. {{text: 384, image: 512}}), got {dims!r}")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.check_config(config)
        self.hidden_size = config["hidden_size"]
        self.initializer_range = config["initializer_range"]
        self.cl_weight = config["cl_weight"]
        self.cl_temperature = config["cl_temperature"]
        self.modalities = tuple(m for m in MODALITIES if config[f"use_{m}"])

        tables = load_item_tokens(config["data_path"], dataset.field2id_token[self.ITEM_ID], self.modalities,
                                  config["token_dims"], config["max_text_tokens"], log=self.logger.info)
        self.retrievers = nn.ModuleDict()
        for modality, table in tables.items():
            if table.vectors.shape[0] != self.n_items:
                raise ValueError(f"TAME: {modality} tokens have {table.vectors.shape[0]} rows for "
                                 f"{self.n_items} items")
            if not table.present[1:].any():
                self.logger.warning(f"TAME: no item has {modality} tokens: every item gets the learned missing "
                                    f"{modality} token (set use_{modality}: False to drop the branch)")
            self.register_buffer(f"{modality}_tokens", table.vectors, persistent=False)  # [n_items, T, d_m]
            self.register_buffer(f"{modality}_mask", table.mask, persistent=False)  # [n_items, T]
            self.retrievers[modality] = make_retriever(config, modality, table.vectors.shape[2])
        self.token_dims = {m: table.vectors.shape[2] for m, table in tables.items()}

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        n_vectors = sum(retriever.n_vectors for retriever in self.retrievers.values())
        self.enrichment = IDEnrichment(n_vectors, self.hidden_size) if config["id_enrichment"] else None
        self.encoders = nn.ModuleDict({k: SequenceEncoder(config, self.max_seq_length)
                                       for k in ("id",) + self.modalities})
        self.loss_fct = nn.CrossEntropyLoss()
        self.apply(self._init_weights)

    def _init_weights(self, module):
        """SASRec's: N(0, initializer_range) for linear and embedding weights, zero biases, unit LayerNorms.
        Parameters outside such modules keep theirs (queries and missing tokens N(0, 0.02), experts ones,
        ``nn.MultiheadAttention``'s input projections Xavier)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def tokens(self, modality):
        """(vectors [n_items, T, d_m], mask [n_items, T]) of a modality."""
        return getattr(self, f"{modality}_tokens"), getattr(self, f"{modality}_mask")

    def retrieve(self, modality, need_weights=False):
        """The retriever of ``modality`` over every item -> ``layers.retrieval.Retrieval``."""
        return self.retrievers[modality](self.item_embedding.weight, *self.tokens(modality), need_weights)

    def item_side(self):
        """Every item's ID embedding, aggregated retrieved vectors and enrichment scale (once per step)."""
        retrieved = {m: self.retrieve(m) for m in self.modalities}
        scale = None
        if self.enrichment is not None:
            scale = self.enrichment(torch.cat([r.vectors for r in retrieved.values()], dim=1))  # [n_items, D]
        return ItemSide(self.item_embedding.weight, {m: r.aggregated for m, r in retrieved.items()}, scale)

    def forward(self, item_seq, item_seq_len, items=None):
        """item_seq [B, L], item_seq_len [B] -> {"id", modality...: r_u [B, D]} (eq. 13)."""
        items = self.item_side() if items is None else items
        attention_mask = self.get_attention_mask(item_seq)  # [B, 1, L, L], causal and padding
        ids = self.encoders["id"].add_positions(items.ids[item_seq])  # x^id = e^id + p (eq. 9), [B, L, D]
        if items.scale is not None:
            ids = ids * items.scale[item_seq]  # x̂^id (eq. 12)
        inputs = {"id": ids}
        for modality in self.modalities:
            inputs[modality] = self.encoders[modality].add_positions(items.modalities[modality][item_seq])
        return {k: self.gather_indexes(self.encoders[k](x, attention_mask), item_seq_len - 1)
                for k, x in inputs.items()}

    @staticmethod
    def candidates(items):
        """{"id", modality...: [n_items, D]}: the candidate side of eq. 14."""
        return {"id": items.ids, **items.modalities}

    def scores(self, users, items):
        """Eq. 14 for every item: [B, n_items]."""
        return sum(users[k] @ table.T for k, table in self.candidates(items).items())

    def calculate_loss(self, interaction):
        """Eq. 17: CE over all items (the padding item 0 is no candidate) + cl_weight * eq. 16."""
        items = self.item_side()
        targets = interaction[self.POS_ITEM_ID]  # [B]
        users = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], items)
        logits = self.scores(users, items)  # [B, n_items]
        logits[:, 0] = float("-inf")
        loss = self.loss_fct(logits, targets)
        if self.cl_weight:
            loss = loss + self.cl_weight * in_batch_infonce(users["id"], items.ids[targets], targets,
                                                            self.cl_temperature)
        return loss

    def predict(self, interaction):
        items = self.item_side()
        users = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], items)
        candidates = interaction[self.ITEM_ID]  # [B]
        return sum((users[k] * table[candidates]).sum(-1) for k, table in self.candidates(items).items())

    def full_sort_predict(self, interaction):
        items = self.item_side()
        users = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], items)
        return self.scores(users, items)  # [B, n_items]
