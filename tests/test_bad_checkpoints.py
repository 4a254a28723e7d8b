"""Checkpoints are data (recbole_mmm4rec/checkpoints.py): a crafted file runs nothing, bad files say what
is wrong and name the file, and genuine checkpoints (ours and RecBole's) still load."""

import io
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr

import pytest
import torch
from recbole.config import Config

import recbole_mmm4rec
from conftest import TINY, build_model, make_config, split_scientific_mm
from recbole_mmm4rec import checkpoints
from recbole_mmm4rec.checkpoints import CheckpointError, ConfigRefused, WrongModel, expecting, read_checkpoint
from recbole_mmm4rec.health import __main__ as health_command
from recbole_mmm4rec.quick_start import PROJECT_ROOT
from recbole_mmm4rec.fine_tuning import load_pretrained

SMALL = {**TINY, "num_layers": 1, "n_layers": 1, "epochs": 1, "eval_batch_size": 256,
         "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}  # the tiny domain has no dataset yaml


def _re(path):
    """``path`` as a regular expression that matches it literally."""
    return re.escape(str(path))


def _marker_code(marker):
    """Python that writes ``marker`` and evaluates to a callable (what KD_DAGFM calls ``eval(teacher)`` on)."""
    return f"(__import__('pathlib').Path({str(marker)!r}).write_text('ran'), print)[1]"


@pytest.fixture(scope="module")
def kd_dagfm_config():
    """RecBole's own Config of KD_DAGFM, a model whose constructor does ``eval(config['teacher'])``."""
    return Config(model="KD_DAGFM", dataset="ml-100k", config_dict={"state": "WARNING", "show_progress": False})


@pytest.fixture()
def payload(kd_dagfm_config, tmp_path):
    """(crafted checkpoint, marker): only allow-listed globals, a config naming KD_DAGFM whose ``teacher``
    would write ``marker``. Nothing may write it."""
    marker = tmp_path / "marker"
    kd_dagfm_config["teacher"] = _marker_code(marker)
    path = tmp_path / "KD_DAGFM-crafted.pth"
    torch.save({"config": kd_dagfm_config, "epoch": 0, "state_dict": {}}, path)
    return path, marker


def test_the_payload_is_live(payload):
    """Control: what the file holds is code that RecBole would run (here run on purpose, unchecked)."""
    path, marker = payload
    config = torch.load(path, weights_only=False)["config"]  # the unsafe loader, on our own test file
    eval(config["teacher"])  # what KD_DAGFM.__init__ does
    assert marker.read_text() == "ran"


def test_crafted_config_is_refused_by_our_loaders(payload):
    path, marker = payload
    for load in (read_checkpoint, recbole_mmm4rec.load_data_and_model):
        with pytest.raises(WrongModel, match=rf"{_re(path)} is a KD_DAGFM RecBole model file; expected one of "
                                             r"recbole-mmm4rec's models \(MMM4Rec"):
            load(path)
    with pytest.raises(WrongModel, match=rf"{_re(path)} is a KD_DAGFM RecBole model file; expected SASRec"):
        recbole_mmm4rec.load_data_and_model(path, expect_model="SASRec")
    assert not marker.exists()


def test_crafted_config_is_refused_by_recboles_own_loader(payload):
    """RecBole's load_data_and_model goes through torch.load: the stand-in Config refuses KD_DAGFM there."""
    from recbole.quick_start import load_data_and_model

    path, marker = payload
    with pytest.raises(ConfigRefused, match="names model 'KD_DAGFM'"):
        load_data_and_model(str(path))
    assert not marker.exists()


def test_crafted_config_is_refused_by_pretrained(payload, scientific):
    path, marker = payload
    model = build_model(scientific[0], scientific[1])
    with pytest.raises(ValueError, match=rf"pretrained: {_re(path)} is a KD_DAGFM checkpoint \(a RecBole model file\); "
                                         r"this model is MMM4Rec: --pretrained takes"):
        load_pretrained(model, str(path))
    assert not marker.exists()


def test_a_pickled_config_constructor_call_is_refused(tmp_path):
    """A pickle may ask to *call* an allow-listed class (REDUCE): RecBole's Config(...) would eval its
    config_dict's strings inside torch.load itself."""
    marker = tmp_path / "marker"

    class Crafted:
        def __reduce__(self):
            return Config, (None, None, None, {"x": f"{_marker_code(marker)}()"})

    path = tmp_path / "reduce.pth"
    torch.save({"config": Crafted(), "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=rf"{_re(path)} is refused as a checkpoint: it asks to construct "
                                              "RecBole's Config"):
        read_checkpoint(path)
    with pytest.raises(ConfigRefused):
        torch.load(path)  # any torch.load in the process, RecBole's included
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    (lambda c: c.final_config_dict.update(weights=torch.zeros(2)),
     r"config.final_config_dict\['weights'\] is a torch.Tensor, not plain data"),
    (lambda c: c.__dict__.update(_build_yaml_loader="x"), "attributes a RecBole Config does not have: _build_yaml"),
    (lambda c: c.__dict__.update(model="KD_DAGFM"), "names no single model"),
])
def test_a_config_that_is_not_plain_data_is_refused(tmp_path, change, message):
    config = make_config({**TINY, "checkpoint_dir": str(tmp_path)})
    change(config)
    path = tmp_path / "odd-config.pth"
    torch.save({"config": config, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=rf"{_re(path)} is refused as a checkpoint: .*{message}"):
        read_checkpoint(path)


def test_cache_files_a_config_names_are_never_unpickled(scientific, tmp_path, monkeypatch):
    """A config naming RecBole's dataset/dataloader caches (plain pickles that create_dataset and
    data_preparation load), beside a crafted cache: neither loader unpickles it."""
    import pathlib
    import pickle

    from recbole.data import create_dataset
    from recbole.quick_start import load_data_and_model as recboles_own

    marker, trap_dir = tmp_path / "marker", tmp_path / "trap"
    trap_dir.mkdir()

    class Crafted:
        def __reduce__(self):
            return pathlib.Path.write_text, (marker, "ran")

    traps = [trap_dir / name for name in ("data.pth", "loaders.pth", "scientific_mm-MultiModalSequentialDataset.pth",
                                          "scientific_mm-for-MMM4Rec-dataloader.pth")]
    for trap in traps:
        trap.write_bytes(pickle.dumps(Crafted()))
    config = make_config({**TINY, "checkpoint_dir": str(trap_dir), "dataset_save_path": str(traps[0]),
                          "dataloaders_save_path": str(traps[1]), "data_path": str(PROJECT_ROOT / "atomic_data")})
    path = tmp_path / "MMM4Rec-with-caches.pth"
    torch.save({"config": config, "epoch": 0, "state_dict": build_model(*scientific[:2]).state_dict()}, path)
    monkeypatch.chdir(tmp_path)  # RecBole's function logs to ./log and looks in ./saved
    for load in (recbole_mmm4rec.load_data_and_model, recboles_own):
        loaded = load(str(path))[0]
        assert not marker.exists()
        assert loaded["checkpoint_dir"] == "saved/" and loaded["dataset_save_path"] is None
    with pytest.raises(AttributeError):  # control: RecBole's pipeline on the file's settings unpickles the trap
        create_dataset(config)  # (which ran, and gave it the int that write_text returns, not a dataset)
    assert marker.read_text() == "ran"


# ---- files that are not checkpoints: the message names the file and says what is wrong -------------------

@pytest.fixture(scope="module")
def genuine_file(tmp_path_factory, scientific):
    """A RecBole model file of a tiny MMM4Rec (as RecBole's Trainer writes it, less the optimizer)."""
    path = tmp_path_factory.mktemp("genuine") / "MMM4Rec-genuine.pth"
    model = build_model(scientific[0], scientific[1])
    torch.save({"config": scientific[0], "epoch": 0, "state_dict": model.state_dict()}, path)
    return path


def _bad_file(tmp_path, genuine_file, kind):
    path = tmp_path / f"{kind}.pth"
    content = {"empty": b"", "truncated": genuine_file.read_bytes()[:4000], "text": b"not a checkpoint\n"}
    path.write_bytes(content[kind])
    return path


@pytest.mark.parametrize("kind, message", [
    ("empty", r"is empty \(0 bytes\), not a checkpoint"),
    ("truncated", r"is not a readable checkpoint \(truncated or corrupt: "),
    ("text", r"is not a readable checkpoint \(not a torch file: a torch checkpoint is a zip archive"),
])
def test_bad_files_say_what_is_wrong(tmp_path, genuine_file, scientific, kind, message):
    path = _bad_file(tmp_path, genuine_file, kind)
    with pytest.raises(CheckpointError, match=f"{_re(path)} {message}"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match=f"{_re(path)} {message}"):
        recbole_mmm4rec.load_data_and_model(path)
    with pytest.raises(ValueError, match=f"pretrained: {_re(path)} {message}"):
        load_pretrained(build_model(scientific[0], scientific[1]), str(path))
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        assert health_command.main([str(path)]) == 2
    lines = stderr.getvalue().strip().splitlines()
    assert len(lines) == 1 and re.match(f"health: error: {_re(path)} {message}", lines[0])


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'nothing.pth'}: no such checkpoint file")):
        read_checkpoint(tmp_path / "nothing.pth")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path} is a directory, not a checkpoint file")):
        read_checkpoint(tmp_path)


def test_a_dict_of_something_else_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=rf"{_re(path)} is not a RecBole or pre-training checkpoint: a dict "
                                              r"without 'state_dict' or 'encoder' \(keys: weights\)"):
        read_checkpoint(path)


def test_a_pre_training_checkpoint_is_no_trained_model(tmp_path, scientific):
    path = tmp_path / "best.pth"
    encoder = build_model(scientific[0], scientific[1]).encoder.state_dict()
    torch.save({"model": "MMM4Rec", "encoder": encoder, "datasets": ["x"], "epoch": 1}, path)
    assert read_checkpoint(path).kind == checkpoints.PRETRAIN_FORMAT
    with pytest.raises(CheckpointError, match=rf"{_re(path)} is a pre-training checkpoint of MMM4Rec: an encoder, not "
                                              "a trained model; fine-tune from it with --pretrained"):
        recbole_mmm4rec.load_data_and_model(path)


# ---- genuine checkpoints, written by real (tiny) training runs ---------------------------------------------

@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    """One small real domain: 300 scientific_mm users with the feature file."""
    return split_scientific_mm(tmp_path_factory.mktemp("ckpt_domain"), ("ckpt_a",), 300)


def _run(model, domain, folder):
    settings = {**SMALL, "data_path": domain, "checkpoint_dir": str(folder)}
    return recbole_mmm4rec.run(model, "ckpt_a", config_dict=settings)


@pytest.fixture(scope="module")
def sasrec_run(domain, tmp_path_factory):
    """One epoch of RecBole's SASRec through run(): its test evaluation reloads the best checkpoint, which
    names SASRec (allowed there: RecBole's trainer expects its own model)."""
    return _run("SASRec", domain, tmp_path_factory.mktemp("sasrec"))


@pytest.fixture(scope="module")
def mmm4rec_run(domain, tmp_path_factory):
    return _run("MMM4Rec", domain, tmp_path_factory.mktemp("mmm4rec"))


def _scores(model, test_data):
    model.eval()
    with torch.no_grad():
        return model.full_sort_predict(next(iter(test_data))[0].to(next(model.parameters()).device))


def test_a_genuine_mmm4rec_checkpoint_loads(mmm4rec_run, scientific):
    path = mmm4rec_run["saved_model_file"]
    config, model, dataset, train, valid, test = recbole_mmm4rec.load_data_and_model(path)
    assert type(config) is Config and config["model"] == "MMM4Rec" and config["checkpoint_dir"] == "saved/"
    saved = read_checkpoint(path, expect_model="MMM4Rec").state["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    again = recbole_mmm4rec.load_data_and_model(path, expect_model="MMM4Rec")
    assert torch.equal(_scores(model, test), _scores(again[1], again[5]))
    target = build_model(make_config({**TINY, "num_layers": 1}), scientific[1], seed=3)  # --pretrained from it
    load_pretrained(target, path)
    assert all(torch.equal(v, saved[f"encoder.{k}"]) for k, v in target.encoder.state_dict().items())


def test_a_recbole_model_checkpoint_loads_when_named(sasrec_run, scientific):
    from recbole.utils import get_trainer

    path = sasrec_run["saved_model_file"]
    assert sasrec_run["test_result"] is not None  # run()'s evaluate(load_best_model=True) read it
    with pytest.raises(WrongModel, match=rf"{_re(path)} is a SASRec RecBole model file; expected one of"):
        recbole_mmm4rec.load_data_and_model(path)
    config, model, *_ = recbole_mmm4rec.load_data_and_model(path, expect_model="SASRec")
    assert type(model).__name__ == "SASRec"
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    trainer.resume_checkpoint(path)  # RecBole's own load, expecting the trainer's model
    assert trainer.start_epoch == read_checkpoint(path, expect_model="SASRec").state["epoch"] + 1
    with pytest.raises(ValueError, match=rf"pretrained: {_re(path)} is a SASRec checkpoint \(a RecBole model file\); "
                                         "this model is MMM4Rec: --pretrained takes a --stage=pretrain checkpoint "
                                         "of MMM4Rec or a checkpoint of MMM4Rec saved by run_recbole.py"):
        load_pretrained(build_model(scientific[0], scientific[1]), path)
    with expecting("SASRec"):
        assert torch.load(path)["config"]["model"] == "SASRec"


def test_cli_pretrained_refuses_the_crafted_checkpoint(payload, domain, tmp_path):
    path, marker = payload
    flags = ["--hidden_size=32", "--inner_size=32", "--head_dim=16", "--n_groups=2", "--d_state=8",
             "--show_progress=False", f"--data_path={domain}", f"--checkpoint_dir={tmp_path}", "--epochs=1"]
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "run_recbole.py"), "--model=MMM4Rec",
                           "--dataset=ckpt_a", f"--pretrained={path}", *flags],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert f"pretrained: {path} is a KD_DAGFM checkpoint" in done.stderr, done.stderr[-3000:]
    assert not marker.exists()
