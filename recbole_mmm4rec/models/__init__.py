"""Plugin models: each is a RecBole recommender, registered by ``recbole_mmm4rec.quick_start.register``."""

from recbole_mmm4rec.models.mamba4rec import Mamba4Rec
from recbole_mmm4rec.models.mmm4rec import MMM4Rec
from recbole_mmm4rec.models.tame import TAME
from recbole_mmm4rec.models.text_sasrec import TextSASRec
from recbole_mmm4rec.models.tim4rec import TiM4Rec
from recbole_mmm4rec.models.unisrec import UniSRec

PLUGIN_MODELS = {"MMM4Rec": MMM4Rec, "Mamba4Rec": Mamba4Rec, "TiM4Rec": TiM4Rec, "TextSASRec": TextSASRec,
                 "UniSRec": UniSRec, "TAME": TAME}
