"""Plugin models: each is a RecBole recommender, registered by ``recbole_mmm4rec.quick_start.register``."""

from recbole_mmm4rec.models.mmm4rec import MMM4Rec

PLUGIN_MODELS = {"MMM4Rec": MMM4Rec}
