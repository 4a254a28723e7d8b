"""Bad configuration fails before any data is loaded, with one line naming the key (or file, or model):
config values of every plugin model, model names, yaml files, an unwritable checkpoint folder."""

import os
import subprocess
import sys

import pytest

import recbole_mmm4rec
from recbole_mmm4rec.quick_start import PROJECT_ROOT

# Each case: (model, overrides, what the message must contain). The values come as RecBole reads them from
# the command line (--temperature=abc is the string 'abc').
BAD_VALUES = [
    ("MMM4Rec", {"hidden_size": 0}, "MMM4Rec: hidden_size must be a positive integer, got 0"),
    ("MMM4Rec", {"hidden_size": -64}, "hidden_size must be a positive integer, got -64"),
    ("MMM4Rec", {"hidden_size": -1}, "hidden_size must be a positive integer, got -1"),
    ("MMM4Rec", {"head_dim": 0}, "head_dim must be a positive integer"),
    ("MMM4Rec", {"n_groups": 0}, "n_groups must be a positive integer"),
    ("MMM4Rec", {"d_state": 0}, "d_state must be a positive integer"),
    ("MMM4Rec", {"num_layers": 0}, "num_layers must be a positive integer"),
    ("MMM4Rec", {"chunk_size": 0}, "chunk_size must be a positive integer"),
    ("MMM4Rec", {"hidden_size": 64.5}, "hidden_size must be a positive integer, got 64.5"),
    ("MMM4Rec", {"temperature": "abc"}, "temperature must be a number > 0, got 'abc'"),
    ("MMM4Rec", {"temperature": 0}, "temperature must be a number > 0, got 0"),
    ("MMM4Rec", {"hidden_dropout_prob": 1.0}, "hidden_dropout_prob must be a number in [0, 1)"),
    ("MMM4Rec", {"time_path": "alive"}, "time_path must be one of live, paper, got 'alive'"),
    ("MMM4Rec", {"time_aware": "yes"}, "time_aware must be True or False"),
    ("MMM4Rec", {"head_dim": 48}, "head_dim = 48 must divide hidden_size * expand = 512"),
    ("MMM4Rec", {"n_groups": 3}, "n_groups = 3 must divide the number of heads"),
    ("MMM4Rec", {"epochs": -1}, "MMM4Rec: epochs must be an integer >= 0 (0: evaluate without training), got -1"),
    ("MMM4Rec", {"train_batch_size": "big"}, "train_batch_size must be a positive integer, got 'big'"),
    ("MMM4Rec", {"learning_rate": -0.1}, "learning_rate must be a number > 0"),
    ("SASRec", {"ddp_timeout": 0}, "ddp_timeout must be a number > 0"),
    ("MMM4Rec", {"accumulation_steps": 0}, "accumulation_steps must be a positive integer"),
    ("TiM4Rec", {"chunk_size": 0}, "TiM4Rec: chunk_size must be a positive integer"),
    ("TiM4Rec", {"d_state": 0}, "TiM4Rec: d_state must be a positive integer"),
    ("Mamba4Rec", {"num_layers": 0}, "Mamba4Rec: num_layers must be a positive integer"),
    ("Mamba4Rec", {"dropout_prob": "x"}, "Mamba4Rec: dropout_prob must be a number in [0, 1)"),
    ("UniSRec", {"n_heads": 0}, "UniSRec: n_heads must be a positive integer"),
    ("UniSRec", {"temperature": "abc"}, "UniSRec: temperature must be a number > 0"),
    ("TextSASRec", {"n_layers": 0}, "TextSASRec: n_layers must be a positive integer"),
    ("SASRec", {"hidden_size": 0}, "SASRec: hidden_size must be a positive integer, got 0"),
    ("GRU4Rec", {"embedding_size": -8}, "GRU4Rec: embedding_size must be a positive integer"),
]


@pytest.mark.parametrize("model, overrides, message", BAD_VALUES)
def test_a_bad_value_names_its_key_before_any_data_is_loaded(model, overrides, message, monkeypatch):
    loaded = []
    monkeypatch.setattr(recbole_mmm4rec.quick_start, "create_dataset", lambda config: loaded.append(config))
    with pytest.raises(ValueError) as error:
        recbole_mmm4rec.run(model, "scientific_mm", config_dict=overrides, saved=False)
    assert message in str(error.value)
    assert not loaded


def test_the_shipped_defaults_pass_every_check():
    for model in recbole_mmm4rec.quick_start.PLUGINS:
        recbole_mmm4rec.build_config(model, "scientific_mm")
    recbole_mmm4rec.build_config("SASRec", "scientific_mm")
    recbole_mmm4rec.build_config("Pop", "scientific_mm")


@pytest.mark.parametrize("name, suggestion", [("SASrec", "SASRec"), ("mmm4rec", "MMM4Rec"),
                                              ("GRU4Recc", "GRU4Rec"), ("NoSuchRecommender", None)])
def test_a_model_name_must_be_exact(name, suggestion):
    with pytest.raises(ValueError) as error:
        recbole_mmm4rec.build_config(name, "scientific_mm")
    message = str(error.value)
    assert f"Unknown model {name!r}" in message
    if suggestion:
        assert f"did you mean {suggestion}" in message
    else:
        assert "did you mean" not in message


def test_the_command_line_refuses_a_wrong_case_model_name(tmp_path):
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "run_recbole.py"), "--model=SASrec",
                             "--dataset=scientific_mm", "--epochs=1", f"--checkpoint_dir={tmp_path}"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    assert "Unknown model 'SASrec'" in result.stderr and "did you mean SASRec?" in result.stderr
    assert "AttributeError" not in result.stderr


def test_a_benchmark_spec_refuses_a_wrong_case_model_name(tmp_path):
    from recbole_mmm4rec.benchmark import SpecError, load

    spec = tmp_path / "bench.yaml"
    spec.write_text("models: [Pop, SASrec]\nseeds: [1]\ndatasets: {scientific_mm: {epochs: 1}}\n")
    with pytest.raises(SpecError) as error:
        load(spec)
    assert str(spec) in str(error.value) and "models[1]" in str(error.value)
    assert "did you mean SASRec?" in str(error.value)


def test_tuning_refuses_a_wrong_case_model_name(tmp_path):
    from recbole_mmm4rec.tuning import Sweep

    with pytest.raises(ValueError, match="did you mean SASRec"):
        Sweep("SASrec", "scientific_mm", output_file=str(tmp_path / "out.md"))


@pytest.mark.parametrize("text, message", [
    ("hidden_size: 64\n  n_layers: [2\n", "not valid yaml"),
    ("- hidden_size\n- 64\n", "expected a mapping of config keys"),
])
def test_a_broken_yaml_file_is_named(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        recbole_mmm4rec.build_config("MMM4Rec", "scientific_mm", config_file_list=[str(path)])
    assert f"config file {path}: {message}" in str(error.value)


def test_a_missing_yaml_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file .*nothing.yaml does not exist"):
        recbole_mmm4rec.build_config("MMM4Rec", "scientific_mm", config_file_list=[str(tmp_path / "nothing.yaml")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_checkpoint_dir_fails_before_training(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    _refused_before_training(folder, monkeypatch)


def test_a_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path, monkeypatch):
    # (a read-only folder is the common case; as root, on this CI, a path under a file is the one that fails)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _refused_before_training(blocker / "saved", monkeypatch)


def _refused_before_training(folder, monkeypatch):
    loaded = []
    monkeypatch.setattr(recbole_mmm4rec.quick_start, "create_dataset", lambda config: loaded.append(config))
    with pytest.raises(PermissionError) as error:
        recbole_mmm4rec.run("Pop", "scientific_mm", config_dict={"checkpoint_dir": str(folder)})
    assert f"checkpoint_dir = {folder}: cannot write there" in str(error.value)
    assert not loaded
