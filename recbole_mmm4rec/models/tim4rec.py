r"""TiM4Rec: time-aware SSD sequential recommendation, on this project's TiSSD block.

Fan et al., "TiM4Rec: An Efficient Sequential Recommendation Model Based on Time-Aware Structured
State Space Duality Model", arXiv 2409.16182 (2024). The Mamba4Rec skeleton (``models/mamba4rec.py``:
ID embedding -> layers -> last real position -> tied dot-product scores, CE over all items) with the
time-aware SSD: the history's time differences (RecBole's ``timestamp_list``) modulate the SSD step
size dt, and each layer hands its updated time signal to the next.

Same TiSSD as MMM4Rec (``layers/tissd.py``), so the differences from the authors' code
(AUTHORS_CODE_NOTES.md §7.2) are: time differences zeroed on padding and normalised over real
positions only (``layers/time.py``, so padding never leaks), dropout on the raw differences from
``time_dropout_prob`` (the authors reuse ``dropout_prob``), Tanhshrink at the end of the time-scale MLP,
SiLU on every causal conv (the authors' released configs fall back to Hardswish), the residual around
the SSD block kept with one layer, and the shared Hardswish FFN with ``inner_size`` (4·D by default, as
the authors). B and C are shared by all heads (``n_groups: 1``), as in the paper.
"""

from recbole_mmm4rec.models.mamba4rec import SSMRecommender


class TiM4Rec(SSMRecommender):
    r"""TiM4Rec (Fan et al., 2024) as a RecBole sequential recommender. Reads ``item_id_list``,
    ``item_length`` and ``timestamp_list`` (``load_col.inter`` must include ``timestamp``); needs
    ``train_neg_sample_args: ~`` and ``loss_type: CE``."""

    TIME_AWARE = True
