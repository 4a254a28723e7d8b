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
    lines = path.read_text().splitlines()
    # no timestamp column, one empty item cell, one user left with 2 interactions
    body = ["\t".join(line.split("\t")[:2]) for line in lines[1:]]
    body[0] = body[0].split("\t")[0] + "\tNA"
    body.append("lonely\t" + body[1].split("\t")[1])
    body.append("lonely\t" + body[2].split("\t")[1])
    path.write_text("user_id:token\titem_id:token\n" + "\n".join(body) + "\n")
    report = check_dataset(copy)
    [message] = failures(report)
    assert "1 row(s) with an empty or missing 'item_id' (line 2)" in message
    warned = " ".join(warnings(report))
    assert "no 'timestamp:float' field" in warned and "time-aware" in warned
    assert "fewer than 3 interactions" in warned and "'lonely'" in warned

    path.write_text("user_id:token\titem_id:tok\n" + "\n".join(body) + "\n")
    [message] = failures(check_dataset(copy))
    assert str(path) in message and "'tok'" in message
