r"""TiM4Rec: time-aware SSD sequential recommendation, on this project's TiSSD block.

Fan et al., "TiM4Rec: An Efficient Sequential Recommendation Model Based on Time-Aware Structured
State Space Duality Model", arXiv 2409.16182 (2024). The Mamba4Rec skeleton (``models/mamba4rec.py``:
ID embedding -> layers -> last real position -> tied dot-product scores, CE over all items) with the
time-aware SSD (Mamba-2) block: the history's time differences (RecBole's ``timestamp_list``) modulate
the SSD step size dt, and each layer hands its updated time signal to the next.

As the authors' code (AUTHORS_CODE_NOTES.md §7): the time-scale MLP has no final activation
(``time_scale_activation: none``), the time path starts at N(0, 0.02) like every layer (``time_path:
paper``), the raw time differences get ``dropout_prob`` and the time path's own dropouts
``time_dropout_prob`` (their ``time_drop_out``), the time gate is per position (``p2p_residual: True``,
their Amazon config), B and C are shared by all heads (``n_groups: 1``), the FFN is Hardswish with
``inner_size`` 4·D, and the SSD puts D on the raw input (mamba-ssm's kernel, which ``ssd_mode: auto`` runs
on CUDA as they do). At that initialisation the time path is nearly silent: other timestamps move the
untrained 64-d model's scores by at most 5e-8 (of scores up to 1.5; measured in float64).
Differences from the authors' code: the time differences are zeroed on padding and normalised over real
positions only (``layers/time.py``; theirs normalise over all L positions, so padding leaks into the time
path), SiLU on every causal conv (their released configs fall back to Hardswish: with 4 heads their code
takes the nn.Conv1d path), the last layer builds no time gate (the time signal it would hand on has no
next layer; theirs is built and never trained), the residual around the SSD block is kept with one layer
(no effect at the default two), the FFN's LayerNorm uses ``norm_eps`` (theirs keeps 1e-12 there), and histories are 20
items long (this package's protocol, ``overall.yaml``; theirs 50 on Amazon, so their time MLPs are 50 x 50).
"""

from recbole_mmm4rec.layers.config import check_tissd_config
from recbole_mmm4rec.layers.tissd import TiSSD
from recbole_mmm4rec.models.mamba4rec import SSMRecommender


class TiM4Rec(SSMRecommender):
    r"""TiM4Rec (Fan et al., 2024) as a RecBole sequential recommender. Reads ``item_id_list``,
    ``item_length`` and ``timestamp_list`` (``load_col.inter`` must include ``timestamp``); needs
    ``train_neg_sample_args: ~`` and ``loss_type: CE``."""

    BLOCK = TiSSD
    # The keys TiSSD (and its SSDMixer, TimeAwareStep, TimeGate) reads.
    LAYER_KEYS = ("expand", "head_dim", "d_state", "n_groups", "chunk_size", "ssd_mode", "d_conv",
                  "MAX_ITEM_LIST_LENGTH", "time_aware", "time_dropout_prob", "time_scale_activation",
                  "p2p_residual")
    TIME_AWARE = True

    @classmethod
    def check_block_config(cls, config, name):
        check_tissd_config(config, name)
