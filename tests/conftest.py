"""Shared fixtures: a tiny MMM4Rec configuration on the bundled scientific_mm data (real items and features)."""

import pytest
import torch

import recbole_mmm4rec
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

# Small enough for 2 CPU cores; every structural part of the model is still there (2 heads per group).
TINY = {
    "hidden_size": 32,
    "inner_size": 32,
    "expand": 2,
    "head_dim": 16,
    "n_groups": 2,
    "d_state": 8,
    "chunk_size": 8,
    "train_batch_size": 256,
    "show_progress": False,
    "state": "WARNING",
    "seed": 2020,
}


@pytest.fixture(scope="session")
def tiny_dict(tmp_path_factory):
    return {**TINY, "checkpoint_dir": str(tmp_path_factory.mktemp("saved"))}


def make_config(base, **overrides):
    return recbole_mmm4rec.build_config("MMM4Rec", "scientific_mm", config_dict={**base, **overrides})


def prepare(config):
    """(config, dataset, train, valid, test) of a config, seeded as RecBole does."""
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    return (config, dataset, *data_preparation(config, dataset))


@pytest.fixture(scope="session")
def scientific(tiny_dict):
    """(config, dataset, train, valid, test) on the bundled data, built once."""
    return prepare(make_config(tiny_dict))


@pytest.fixture(scope="session")
def office(tiny_dict):
    """(config, dataset, train, valid, test) on the bundled office (real timestamps, no images), built once."""
    return prepare(recbole_mmm4rec.build_config("MMM4Rec", "office", config_dict=tiny_dict))


@pytest.fixture(scope="session")
def test_batch(scientific):
    """A full-sort test batch (Interaction) of real users."""
    return next(iter(scientific[4]))[0]


def build_model(config, dataset, seed=0):
    from recbole_mmm4rec.models import MMM4Rec

    torch.manual_seed(seed)
    return MMM4Rec(config, dataset).eval()


def fit_steps(model, batch, steps, lr):
    """Train ``model`` on one batch, repeated, with Adam; returns the loss of every step."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def split_scientific_mm(root, names, users_each):
    """Disjoint real domains cut from the bundled scientific_mm: ``users_each`` users per name (in user
    order), each a folder ``root/name`` with its ``.inter`` and the feature file. Returns ``str(root)``."""
    import shutil
    from collections import defaultdict

    from recbole_mmm4rec.quick_start import PROJECT_ROOT

    source = PROJECT_ROOT / "atomic_data" / "scientific_mm"
    header, *rows = (source / "scientific_mm.inter").read_text().splitlines()
    by_user = defaultdict(list)
    for row in rows:
        by_user[row.split("\t")[0]].append(row)
    users = sorted(by_user)
    for i, name in enumerate(names):
        folder = root / name
        folder.mkdir()
        part = users[i * users_each:(i + 1) * users_each]
        lines = [header] + [row for user in part for row in by_user[user]]
        (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
        shutil.copy(source / "scientific_mm.features.npz", folder / f"{name}.features.npz")
    return str(root)


def load_script(name):
    """A feature_extraction/ script (not a package module), loaded from its path."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "feature_extraction" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# A tiny CLIP for open_clip tests: its bundled BPE tokenizer (a config named "siglip" would need a hub file).
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip_checkpoint(folder):
    """Register the config "tiny-test-clip" with open_clip and save random weights; returns the weights path."""
    import json

    import open_clip

    (folder / "tiny-test-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(folder / "tiny-test-clip.json"))
    torch.manual_seed(0)
    path = folder / "tiny.pt"
    torch.save(open_clip.create_model("tiny-test-clip", pretrained=None).state_dict(), path)
    return str(path)


def interrupted_at(epoch, monkeypatch):
    """The next training stops (as a kill would: KeyboardInterrupt, not an Exception) when epoch ``epoch``
    (0-based) begins; any trainer, through ``recbole_mmm4rec.history.EpochHistory``."""
    from recbole_mmm4rec import history

    real = history.EpochHistory._train_epoch

    def train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == epoch:
            raise KeyboardInterrupt
        return real(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(history.EpochHistory, "_train_epoch", train_epoch)
