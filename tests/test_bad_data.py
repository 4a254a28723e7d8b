"""Bad interaction data stops training early with file, line, field and value; odd data is warned about.

Every case is a small broken copy of the bundled scientific_mm (``split_scientific_mm``): the check
(``recbole_mmm4rec/data/checks.py``) runs before RecBole reads the files, so no test trains a model.
"""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recbole.data import create_dataset, data_preparation

import recbole_mmm4rec
from conftest import TINY, split_scientific_mm
from recbole_mmm4rec.check import check_dataset
from recbole_mmm4rec.data.checks import InteractionDataError, check_files, check_interactions, split_roles
from recbole_mmm4rec.data.rules import Rules

ROOT = Path(__file__).resolve().parent.parent
NAME = "bad"  # no properties/dataset/bad.yaml: our model defaults (and RecBole's) apply
USERS = 40


@pytest.fixture
def data(tmp_path):
    """tmp_path/data/bad/: 40 real users of scientific_mm (.inter and feature file); returns the data_path."""
    root = tmp_path / "data"
    root.mkdir()
    split_scientific_mm(root, [NAME], USERS)
    return root


def inter(data):
    return data / NAME / f"{NAME}.inter"


def edit_rows(data, change, header=None):
    """Rewrite the .inter: ``change(rows)`` edits the data rows (lists of cells) in place; returns the rows."""
    path = inter(data)
    first, *lines = path.read_text().splitlines()
    rows = [line.split("\t") for line in lines]
    change(rows)
    path.write_text("\n".join([header or first] + ["\t".join(row) for row in rows]) + "\n")
    return rows


def snapshot(root):
    """Every file under root with its bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(root).rglob("*")) if p.is_file()}


def config(data, model="MMM4Rec", **overrides):
    return recbole_mmm4rec.build_config(model, NAME, config_dict={**TINY, "data_path": str(data), **overrides})


def refused(data, model="MMM4Rec", **overrides):
    """The InteractionDataError message for this run; the files are left as they were."""
    before = snapshot(data)
    with pytest.raises(InteractionDataError) as error:
        check_interactions(config(data, model, **overrides))
    assert snapshot(data) == before
    return str(error.value)


# ----------------------------------------------------------------------------- case 1: empty cells


@pytest.mark.parametrize("cell", ["", "NaN", "null", "NA"])
def test_empty_timestamp_is_refused_with_file_line_and_field(data, cell):
    def blank(rows):
        rows[5][2] = cell  # file line 7

    edit_rows(data, blank)
    message = refused(data)
    assert str(inter(data)) in message and "field 'timestamp'" in message and "(line 7)" in message
    assert "mean time" in message and "test item" in message


@pytest.mark.parametrize("column, field", [(0, "user_id"), (1, "item_id")])
def test_empty_user_or_item_is_refused(data, column, field):
    def blank(rows):
        rows[2][column] = ""  # file line 4
        rows[9][column] = "None"  # file line 11

    edit_rows(data, blank)
    message = refused(data)
    assert str(inter(data)) in message and f"field '{field}'" in message
    assert "2 line(s) (line 4, line 11)" in message


def test_run_and_create_dataset_stop_before_anything_is_written(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # RecBole's log/ goes here
    edit_rows(data, lambda rows: rows[0].__setitem__(2, ""))
    saved = tmp_path / "saved"
    before = snapshot(data)
    with pytest.raises(InteractionDataError, match="line 2"):
        recbole_mmm4rec.run("MMM4Rec", NAME, config_dict={**TINY, "data_path": str(data), "epochs": 1,
                                                          "checkpoint_dir": str(saved)})
    with pytest.raises(InteractionDataError, match="field 'timestamp'"):
        create_dataset(config(data))  # RecBole's own entry points build our dataset class: checked too
    with pytest.raises(InteractionDataError, match="field 'timestamp'"):
        recbole_mmm4rec.pretrain([NAME], config_dict={**TINY, "data_path": str(data), "epochs": 1,
                                                      "checkpoint_dir": str(saved)})
    assert snapshot(data) == before
    assert not list(saved.rglob("*.pth"))


# ----------------------------------------------------------------------------- case 2: no time field


def drop_timestamps(data):
    edit_rows(data, lambda rows: [row.pop() for row in rows], header="user_id:token\titem_id:token")


@pytest.mark.parametrize("model, overrides", [
    ("MMM4Rec", {}),
    ("MMM4Rec", {"time_aware": False}),  # still a sequential dataset: RecBole sorts by time
    ("TiM4Rec", {}),
    ("SASRec", {"load_col": {"inter": ["user_id", "item_id", "timestamp"]}}),
])
def test_missing_timestamp_column_names_file_column_and_model(data, model, overrides):
    drop_timestamps(data)
    message = refused(data, model, **overrides)
    assert str(inter(data)) in message and "no 'timestamp:float' column" in message
    assert f"{model} is a sequential model" in message and "TIME_FIELD: ~" in message


def test_no_setting_turns_time_off_for_a_sequential_model(data):
    drop_timestamps(data)
    message = refused(data, "SASRec", TIME_FIELD=None, load_col={"inter": ["user_id", "item_id"]})
    assert "TIME_FIELD is not set" in message and "SASRec is a sequential model" in message


def test_a_general_model_without_time_needs_a_random_order(data):
    drop_timestamps(data)
    message = refused(data, "Pop", TIME_FIELD=None)
    assert "eval_args order: TO" in message
    random_order = {"split": {"LS": "valid_and_test"}, "order": "RO", "group_by": "user", "mode": "full"}
    assert check_interactions(config(data, "Pop", TIME_FIELD=None, eval_args=random_order)) == []


def test_timestamp_present_but_not_loaded(data):
    message = refused(data, "SASRec")  # RecBole's default load_col is [user_id, item_id]
    assert "'timestamp' is not loaded" in message and "load_col" in message


def test_check_tool_fails_a_missing_timestamp(data):
    drop_timestamps(data)
    folder = data / NAME
    done = subprocess.run([sys.executable, "-m", "recbole_mmm4rec.check", str(folder)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1, done.stdout + done.stderr
    [fail] = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    assert str(inter(data)) in fail and "no 'timestamp:float' column" in fail and "MMM4Rec" in fail
    # a general model with TIME_FIELD: ~ and a random order needs no time: the tool passes it
    yaml_file = data / "pop.yaml"
    yaml_file.write_text("TIME_FIELD: ~\neval_args: {order: RO}\n")
    report = check_dataset(folder, config_file=str(yaml_file), model="Pop")
    assert report.ok, report.to_text()
    assert subprocess.run([sys.executable, "-m", "recbole_mmm4rec.check", str(folder), "--model", "Nope"],
                          capture_output=True, text=True, cwd=ROOT).returncode == 2


# ----------------------------------------------------------------------------- case 3: non-numeric times


@pytest.mark.parametrize("value", ["12:30", "2014-01-01", "inf", "1,5"])
def test_non_numeric_timestamp_names_file_line_and_value(data, value):
    edit_rows(data, lambda rows: rows[10].__setitem__(2, value))  # file line 12
    message = refused(data)
    assert str(inter(data)) in message and "field 'timestamp'" in message
    assert f"line 12: {value!r}" in message and "not finite numbers" in message


def test_other_float_fields_refused_when_not_numbers_and_warned_when_empty(data, caplog):
    def add_rating(rows):
        for row in rows:
            row.append("4.0")
        rows[3][3] = ""  # file line 5

    edit_rows(data, add_rating, header="user_id:token\titem_id:token\ttimestamp:float\trating:float")
    load = {"load_col": {"inter": ["user_id", "item_id", "timestamp", "rating"]}}
    with caplog.at_level(logging.WARNING):
        [warning] = check_interactions(config(data, **load))
    assert "field 'rating' is empty on 1 line(s) (line 5)" in warning and "mean" in warning
    assert warning in caplog.text
    edit_rows(data, lambda rows: rows[3].__setitem__(3, "four"))
    assert "line 5: 'four'" in refused(data, **load)
    assert check_interactions(config(data)) == []  # rating not loaded: not checked


# ----------------------------------------------------------------------------- case 4: short users


def add_short_users(data):
    """Users with 1, 2, 3 and 4 interactions (real items, increasing times)."""
    def add(rows):
        items = [row[1] for row in rows[:4]]
        for n in (1, 2, 3, 4):
            rows += [[f"short{n}", items[k], str(k + 1)] for k in range(n)]

    edit_rows(data, add)


def test_short_users_are_warned_about_with_counts(data, caplog):
    add_short_users(data)
    before = snapshot(data)
    with caplog.at_level(logging.WARNING):
        [warning] = check_interactions(config(data))
    assert warning in caplog.text  # logged through RecBole's (the root) logger
    assert str(inter(data)) in warning and f"3 of {USERS + 4} user(s) have fewer than 4 interactions" in warning
    assert "1 with 1 (in no split" in warning and "1 with 2 (train only" in warning
    assert "1 with 3 (train and test, no validation)" in warning and "'short1'" in warning
    assert 'user_inter_num_interval: "[4,inf)"' in warning
    assert snapshot(data) == before
    assert check_interactions(config(data, user_inter_num_interval="[4,inf)")) == []


def test_the_warning_says_what_recbole_does(data):
    """The splits each short user lands in, from RecBole's own leave-one-out."""
    add_short_users(data)
    cfg = config(data)
    dataset = create_dataset(cfg)
    splits = dict(zip(("train", "valid", "test"), data_preparation(cfg, dataset)))
    present = {name: set(dataset.id2token("user_id", loader._dataset.inter_feat["user_id"].numpy()))
               for name, loader in splits.items()}
    for n in (1, 2, 3, 4):
        found = tuple(name for name in ("train", "valid", "test") if f"short{n}" in present[name])
        assert found == split_roles(n, "valid_and_test", sequential=True), n


def test_check_tool_warns_about_short_users(data):
    add_short_users(data)
    report = check_dataset(data / NAME)
    assert report.ok, report.to_text()
    [warned] = [c["message"] for c in report.checks if c["status"] == "WARN"]
    assert "fewer than 4 interactions" in warned and "1 with 3 (train and test, no validation)" in warned
    assert report.figures["users_with_fewer_than_4_interactions"] == 3


def test_a_repeated_check_logs_once_and_a_changed_file_is_checked_again(data, caplog):
    add_short_users(data)
    with caplog.at_level(logging.WARNING):
        first = check_interactions(config(data))
        again = check_interactions(config(data))
    assert first == again and caplog.text.count("fewer than 4 interactions") == 1
    edit_rows(data, lambda rows: rows[0].__setitem__(2, "x"))
    assert "line 2: 'x'" in refused(data)


# ----------------------------------------------------------------------------- malformed files


def test_malformed_files(data):
    path = inter(data)
    text = path.read_text()
    lines = text.splitlines()
    lines[6] += "\t99"  # file line 7: a fourth cell
    path.write_text("\n".join(lines) + "\n")
    assert f"{path}, line 7 has 4 cells, the header 3" in refused(data)

    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert "byte order mark" in refused(data)
    assert any("byte order mark" in c["message"] for c in check_dataset(data / NAME).checks)

    path.write_text(text.replace("timestamp:float", "timestamp:token", 1))
    assert "'timestamp' has type 'token', must be 'float'" in refused(data)

    path.write_text(text.splitlines()[0] + "\n")
    assert "no interaction rows" in refused(data)

    os.remove(path)
    assert f"{path} does not exist" in refused(data)


def test_benchmark_files_are_checked_each(data):
    path = inter(data)
    header, *lines = path.read_text().splitlines()
    for part, chunk in (("train", lines[:100]), ("valid", lines[100:150]), ("test", lines[150:])):
        (data / NAME / f"{NAME}.{part}.inter").write_text("\n".join([header] + chunk) + "\n")
    os.remove(path)
    parts = {"benchmark_filename": ["train", "valid", "test"]}
    assert check_interactions(config(data, **parts)) == []
    valid = data / NAME / f"{NAME}.valid.inter"
    rows = valid.read_text().splitlines()
    rows[3] = rows[3].rsplit("\t", 1)[0] + "\tsoon"
    valid.write_text("\n".join(rows) + "\n")
    message = refused(data, **parts)
    assert str(valid) in message and "line 4: 'soon'" in message


# ----------------------------------------------------------------------------- the bundled data


@pytest.mark.parametrize("name", ["scientific_mm", "scientific", "office", "movielens"])
def test_bundled_datasets_pass_quickly(name):
    rules = Rules.from_config(recbole_mmm4rec.build_config("MMM4Rec", name, config_dict={"state": "WARNING"}))
    start = time.perf_counter()
    assert check_files(rules) == []
    assert time.perf_counter() - start < 5  # about 0.2 s for movielens' 100,000 rows on an idle core
    report = check_dataset(ROOT / "atomic_data" / name)  # the check tool agrees
    assert report.ok and not report.problems, report.to_text()
