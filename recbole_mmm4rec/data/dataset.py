"""The RecBole dataset that attaches precomputed item features to RecBole's internal item ids."""

import os

from recbole.data.dataset import SequentialDataset
from recbole.utils import set_color

from recbole_mmm4rec.data.checks import check_interactions
from recbole_mmm4rec.data.features import FEATURE_SUFFIX, align_features, read_features
from recbole_mmm4rec.data.on_demand import ensure_text_features

MODALITIES = ("text", "image")


class MultiModalSequentialDataset(SequentialDataset):
    """``SequentialDataset`` plus ``item_features``: modality -> (table [n_items, d], present [n_items]).

    Features come from ``<data_path>/<dataset>.features.npz`` (format: ``data/features.py``) and are
    aligned through the item tokens (``field2id_token['item_id']``), never by row position. Row 0 is
    RecBole's padding item. A modality absent from the file (e.g. no images) is all missing.
    ``feature_dims`` ({modality: dimension}, optional) is checked against the file. With
    ``build_text_features`` the file is first built from the item texts if missing (``data/on_demand.py``). The ``.inter`` is
    checked first (``data/checks.py``: bad ids or times stop loading with file, line and field), also
    when RecBole's own entry points build this dataset; ``quick_start`` checks it for every model.
    """

    def __init__(self, config):
        check_interactions(config)
        super().__init__(config)
        # RecBole's data_path is already <data_path>/<dataset> here.
        path = os.path.join(config["data_path"], config["dataset"] + FEATURE_SUFFIX)
        if config["build_text_features"]:  # e.g. games: encoded from <dataset>.item when missing
            ensure_text_features(config["data_path"], log=self.logger.info)
        features = read_features(path)
        self.item_features = align_features(
            features, self.field2id_token[self.iid_field], MODALITIES, config["feature_dims"]
        )
        for modality, (table, present) in self.item_features.items():
            self.logger.info(
                set_color(f"{modality} features", "green")
                + f": dimension {table.shape[1]}, {int(present.sum())} of {len(present) - 1} items"
                + f" present ({path})"
            )
