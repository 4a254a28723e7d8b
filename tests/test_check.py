"""`python -m recbole_mmm4rec.check`: the bundled datasets pass, broken copies fail naming file and problem."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recbole_mmm4rec.check import check_dataset, main, parse_dims

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "atomic_data"
NAME = "scientific_mm"  # the smallest bundled folder: broken copies start from it


def failures(report):
    return [c["message"] for c in report.checks if c["status"] == "FAIL"]


def warnings(report):
    return [c["message"] for c in report.checks if c["status"] == "WARN"]


@pytest.fixture
def copy(tmp_path):
    """A fresh copy of atomic_data/scientific_mm (same name, so its yaml's feature_dims apply)."""
    folder = tmp_path / NAME
    shutil.copytree(DATA / NAME, folder)
    return folder


def rewrite_features(folder, change):
    """Load the feature arrays, let ``change`` edit the dict, save without write_features' validation."""
    path = folder / f"{NAME}.features.npz"
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("name", ["scientific_mm", "scientific", "office"])
def test_bundled_datasets_pass_with_their_figures(name):
    report = check_dataset(DATA / name)
    assert report.ok, report.to_text()
    assert not warnings(report), report.to_text()
    stats = json.loads((DATA / name / f"{name}.stats.json").read_text())
    for key in ("users", "items", "interactions"):
        assert report.figures[key] == stats[key]
    assert report.figures["avg_seq_len"] == pytest.approx(stats["avg_seq_len"], abs=1e-4)
    assert report.figures["items_without_features"] == 0
    for modality, info in report.figures["features"].items():
        assert info["dim"] == stats["features"][modality]["dim"]
        assert info["coverage"] == stats["features"][modality]["coverage"]
    if "time_span_days" in stats:
        assert report.figures["time_span_days"] == stats["time_span_days"]


def test_cli_exit_codes_and_json(copy):
    ok = subprocess.run([sys.executable, "-m", "recbole_mmm4rec.check", str(copy)],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK: 0 failure(s)" in ok.stdout and "users: 2928" in ok.stdout

    os.remove(copy / f"{NAME}.features.npz")
    bad = subprocess.run([sys.executable, "-m", "recbole_mmm4rec.check", str(copy), "--json"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    result = json.loads(bad.stdout)
    assert result["ok"] is False and result["figures"]["interactions"] == 19712
    [problem] = result["problems"]
    assert problem["status"] == "FAIL" and f"{NAME}.features.npz is missing" in problem["message"]


def test_missing_feature_file(copy, capsys):
    os.remove(copy / f"{NAME}.features.npz")
    assert main([str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  features: Feature file {copy / NAME}.features.npz is missing" in out
    assert "README.md, section 'Feature files'" in out


def test_item_missing_from_feature_file(copy):
    dropped = []

    def drop_first(arrays):
        dropped.append(str(arrays["item_id"][0]))
        for key in arrays:
            arrays[key] = arrays[key][1:]

    path = rewrite_features(copy, drop_first)
    report = check_dataset(copy)
    [message] = failures(report)
    assert str(path) in message and "no row for 1 of the 1585 item(s)" in message and repr(dropped[0]) in message
    assert report.figures["items_missing_from_feature_file"] == 1


def test_nan_in_a_feature_row(copy):
    def poison(arrays):
        arrays["image"] = arrays["image"].copy()
        arrays["image"][3, 7] = np.nan

    path = rewrite_features(copy, poison)
    [message] = failures(check_dataset(copy))
    assert str(path) in message and "'image' has NaN or inf" in message


def test_malformed_inter_rows(copy):
    path = copy / f"{NAME}.inter"
    lines = path.read_text().splitlines()
    lines[4] += "\textra"  # file line 5
    lines[9] = lines[9].split("\t")[0]  # file line 10: one column
    path.write_text("\n".join(lines) + "\n")
    report = check_dataset(copy)
    [message] = failures(report)
    assert str(path) in message and "2 row(s) do not have the header's 3" in message
    assert "line 5 has 4" in message and "line 10 has 1" in message
    assert report.figures["interactions"] == 19712 - 2  # the well-formed rows are still checked


def test_dimension_disagrees_with_feature_dims(copy):
    [message] = failures(check_dataset(copy, feature_dims={"text": 384}))
    assert f"{NAME}.features.npz: text features have dimension 512" in message and "384" in message
    assert parse_dims("text=384,image=512") == {"text": 384, "image": 512}
    assert main([str(copy), "--feature-dims", "image=1024"]) == 1


def test_missing_inter(copy):
    os.remove(copy / f"{NAME}.inter")
    report = check_dataset(copy)
    assert not report.ok
    assert any(f"{copy / NAME}.inter is missing" in m for m in failures(report))


def test_bad_header_missing_cells_and_warnings(copy):
    path = copy / f"{NAME}.inter"
    header, *rows = path.read_text().splitlines()
    # one NA item cell (file line 2), one user with 2 interactions (train only for a sequential model)
    user, _, time = rows[0].split("\t")
    rows[0] = f"{user}\tNA\t{time}"
    rows += ["lonely\t" + rows[1].split("\t")[1] + "\t1", "lonely\t" + rows[2].split("\t")[1] + "\t2"]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    report = check_dataset(copy)
    [message] = failures(report)
    assert str(path) in message and "field 'item_id' is empty or missing on 1 line(s) (line 2)" in message
    [warned] = warnings(report)
    assert "fewer than 4 interactions" in warned and "1 with 2 (train only" in warned and "'lonely'" in warned
    assert report.figures["users_with_fewer_than_4_interactions"] == 1

    # no timestamp column: RecBole's sequential datasets cannot load it, so it fails (it used to warn)
    path.write_text("user_id:token\titem_id:token\n" + "\n".join("\t".join(r.split("\t")[:2]) for r in rows) + "\n")
    assert any("no 'timestamp:float' column" in m and "MMM4Rec" in m for m in failures(check_dataset(copy)))

    path.write_text("user_id:token\titem_id:tok\n" + "\n".join(rows) + "\n")
    [message] = failures(check_dataset(copy))
    assert str(path) in message and "'tok'" in message
