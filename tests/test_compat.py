"""Each fix in recbole_mmm4rec/compat.py, pinned down."""

import io
import os
import pickle

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data.dataset import Dataset
from recbole.trainer import Trainer

import recbole_mmm4rec  # noqa: F401  (applies the fixes)
from recbole_mmm4rec.checkpoints import CheckpointConfig, ConfigRefused, expecting
from recbole_mmm4rec.compat import save_atomically


def test_numpy_aliases_recbole_uses_exist():
    assert np.float_ is np.float64 and np.bool8 is np.bool_ and np.unicode_ is np.str_


def test_recbole_config_builds_on_numpy2():
    config = Config(model="SASRec", dataset="ml-100k", config_dict={"train_neg_sample_args": None})
    assert config["model"] == "SASRec"


def _atomic_files(tmp_path, inter, item):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "tiny.inter").write_text(inter)
    (folder / "tiny.item").write_text(item)
    return Config(
        model="Pop",
        dataset="tiny",
        config_dict={"data_path": str(tmp_path), "load_col": None, "show_progress": False,
                     "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "RO", "mode": "full"}},
    )


def test_missing_values_and_token_sequences_load_with_the_pinned_pandas(tmp_path):
    inter = "user_id:token\titem_id:token\trating:float\n1\ta\t5\n1\tb\t\n2\ta\t3\n"
    item = "item_id:token\ttags:token_seq\na\tx y z\nb\t\n"  # b has an empty token_seq cell
    dataset = Dataset(_atomic_files(tmp_path, inter, item))
    ratings = np.asarray(dataset.inter_feat["rating"])
    assert sorted(ratings.tolist()) == [3.0, 4.0, 5.0]  # the NaN got the mean, as RecBole intends
    tags = dict(zip(dataset.item_feat["item_id"], dataset.item_feat["tags"]))  # item id -> tag ids
    a, b = dataset.token2id("item_id", ["a", "b"])
    assert len(tags[a]) == 3 and len(set(tags[a].tolist())) == 3 and len(tags[b]) == 0


class _Trainer:
    """The attributes ``Trainer._save_checkpoint`` reads."""

    def __init__(self, config, path):
        self.config, self.saved_model_file = config, path
        self.cur_step, self.best_valid_score = 3, np.float64(0.25)
        self.model = torch.nn.Linear(2, 2)
        self.model.other_parameter = lambda: None
        self.optimizer = torch.optim.Adam(self.model.parameters())


def test_recbole_checkpoint_loads_with_weights_only_default(tmp_path):
    config = Config(model="SASRec", dataset="ml-100k", config_dict={"train_neg_sample_args": None})
    path = str(tmp_path / "model.pth")
    trainer = _Trainer(config, path)
    Trainer._save_checkpoint(trainer, epoch=2, verbose=False)
    with expecting("SASRec"):  # what RecBole's Trainer.evaluate / resume_checkpoint do for their own model
        checkpoint = torch.load(path)  # torch's default: weights_only=True
    assert checkpoint["epoch"] == 2 and checkpoint["config"]["model"] == "SASRec"
    assert type(checkpoint["config"]) is Config  # the stand-in became RecBole's Config, with checked data
    with pytest.raises(ConfigRefused, match="names model 'SASRec'"):  # not one of ours, not expected
        torch.load(path)
    assert torch.equal(checkpoint["state_dict"]["weight"], trainer.model.weight)
    assert [f for f in os.listdir(tmp_path)] == ["model.pth"]  # no temporary file left


def test_weights_only_still_refuses_foreign_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"payload": io.BytesIO(b"not allow-listed")}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)


def test_recbole_config_is_not_allow_listed_itself():
    """Its name loads the stand-in (never constructed, state checked); RecBole's enums load by value."""
    from torch._weights_only_unpickler import _get_user_allowed_globals

    allowed = _get_user_allowed_globals()
    assert allowed["recbole.config.configurator.Config"] is CheckpointConfig
    assert Config not in allowed.values()
    assert not any(isinstance(v, type) and v.__module__ == "recbole.utils.enum_type" for v in allowed.values())


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "model.pth")
    save_atomically({"version": 1}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_atomically({"version": 2}, path)
    assert torch.load(path) == {"version": 1}
    assert os.listdir(tmp_path) == ["model.pth"]


def test_torchvision_cuda_wheel_imports_beside_cpu_torch():
    """PyPI's torchvision 0.28.0 (installed by the [test] and [features] extras) next to the CPU torch."""
    pytest.importorskip("torchvision")  # recbole_mmm4rec was imported first, as every entry point does
    import torchvision.transforms as transforms
    from sentence_transformers import SentenceTransformer  # noqa: F401  (imports transformers too)

    assert transforms.Resize(8).size == 8


def test_recbole_models_leave_anomaly_detection_off():
    """RecBole's sine.py switches anomaly detection on for the whole process when its model package is
    imported (every backward then scans every tensor for NaN); importing recbole_mmm4rec switches it off."""
    import importlib

    import recbole.model.sequential_recommender.sine as sine
    from recbole.utils import get_model

    assert get_model("SASRec") and get_model("MMM4Rec")  # both resolve through RecBole's package
    assert not torch.is_anomaly_enabled()
    importlib.reload(sine)  # what the import does, visibly
    assert torch.is_anomaly_enabled()
    recbole_mmm4rec.compat.switch_off_anomaly_detection()
    assert not torch.is_anomaly_enabled()
