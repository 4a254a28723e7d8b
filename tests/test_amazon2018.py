"""Tests of feature_extraction/amazon2018.py on a tiny raw sample in the Amazon Reviews 2018 format."""

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from recbole.data import create_dataset

import recbole_mmm4rec

REPO = Path(__file__).resolve().parents[1]
DAY = 86400
D1 = 1388534400  # 2014-01-01, midnight UTC like every Amazon 2018 time
T = {k: D1 + (k - 1) * DAY for k in range(1, 8)}  # T[k] = day k


def load_converter():
    """The converter is a script, not a package module: load it from its path."""
    spec = importlib.util.spec_from_file_location("amazon2018", REPO / "feature_extraction" / "amazon2018.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


conv = load_converter()

# (user, item, rating, day) in file order. With min_inter = 3 the expected result is users u1-u4, items i1-i4.
ROWS = [
    ("u1", "i1", 5.0, 1), ("u1", "i4", 4.0, 3), ("u1", "i3", 3.0, 3), ("u1", "i2", 5.0, 2),  # i4, i3 tie on day 3
    ("u2", "i1", 1.0, 1), ("u2", "i2", 2.0, 1), ("u2", "i3", 3.0, 1),  # three on one day
    ("u2", "i2", 2.0, 1),  # exact duplicate: dropped
    ("u3", "i2", 4.0, 2), ("u3", "i3", 4.0, 3), ("u3", "i4", 4.0, 4),
    ("u4", "i1", 5.0, 2), ("u4", "i3", 5.0, 4), ("u4", "i4", 5.0, 5),
    ("u4", "i1", 4.0, 6),  # the same item again on another day: kept
    ("u1", "i9", 5.0, 4), ("u2", "i9", 5.0, 5), ("u3", "i9", 5.0, 6),  # i9 has no metadata: dropped
    # cascade: round 1 drops u9 (2 rows) and i6 (2 rows); then u7, u8 and i5 have 2 rows each: round 2 drops them
    ("u7", "i5", 5.0, 1), ("u7", "i6", 5.0, 2), ("u7", "i1", 5.0, 3),
    ("u8", "i5", 5.0, 1), ("u8", "i6", 5.0, 2), ("u8", "i2", 5.0, 3),
    ("u9", "i5", 5.0, 1), ("u9", "i1", 5.0, 2),
]
LONG_TITLE = "word " * 150
META = [
    {"asin": "i1", "title": "Lab &amp; Bench <b>Scale</b>\n  500g", "category": ["Industrial &amp; Scientific",
     "Lab  Scales"], "brand": "  Acme ", "imageURL": ["http://lo/i1.jpg"],
     "imageURLHighRes": ["http://hi/i1.jpg", "http://hi/i1b.jpg"]},
    {"asin": "i2", "title": "Beaker", "category": [], "brand": "Glassco", "imageURL": ["http://lo/i2.jpg"],
     "imageURLHighRes": []},
    {"asin": "i2", "title": "a second record of i2: ignored", "imageURLHighRes": ["http://hi/other.jpg"]},
    {"asin": "i3", "title": "Pipette\ttips", "category": ["Lab"]},  # no image at all
    {"asin": "i4", "title": LONG_TITLE, "brand": "Long", "imageURLHighRes": ["http://hi/i4.jpg"]},
    {"asin": "i5", "title": "five", "imageURL": []},
    {"asin": "i6", "title": "six"},
    {"asin": "i7", "title": "never bought"},
]
# expected: user -> [(item, rating, timestamp)] in time order, ties broken by 128 s in file order
EXPECTED = {
    "u1": [("i1", 5, T[1]), ("i2", 5, T[2]), ("i4", 4, T[3]), ("i3", 3, T[3] + 128)],
    "u2": [("i1", 1, T[1]), ("i2", 2, T[1] + 128), ("i3", 3, T[1] + 256)],
    "u3": [("i2", 4, T[2]), ("i3", 4, T[3]), ("i4", 4, T[4])],
    "u4": [("i1", 5, T[2]), ("i3", 5, T[4]), ("i4", 5, T[5]), ("i1", 4, T[6])],
}


def write_gz(path, records):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Domain 'Scientific' as 5-core-style reviews json.gz; domain 'Pantry' as the ratings-only csv."""
    folder = tmp_path_factory.mktemp("raw")
    reviews = [{"overall": r, "verified": True, "reviewTime": "01 1, 2014", "reviewerID": u, "asin": i,
                "reviewerName": "x", "reviewText": "<br/>ok", "summary": "ok", "unixReviewTime": T[d]}
               for u, i, r, d in ROWS]
    write_gz(folder / "Scientific_5.json.gz", reviews)
    (folder / "Pantry.csv").write_text("".join(f"{i},{u},{r},{T[d]}\n" for u, i, r, d in ROWS))
    for domain in ("Scientific", "Pantry"):
        write_gz(folder / f"meta_{domain}.json.gz", META)
    return folder


@pytest.fixture(scope="module")
def converted(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("atomic")
    stats = conv.convert_domain(str(raw), "Scientific", str(out), "sci", min_inter=3, progress=False,
                                log=lambda *args: None)
    return out, stats


def read_tsv(path):
    return [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")]


def test_counts_and_stats(converted):
    out, stats = converted
    assert stats["source_kind"] == "5core" and stats["source"].endswith("Scientific_5.json.gz")
    assert (stats["raw_interactions"], stats["duplicates_dropped"], stats["dropped_without_meta"]) == (26, 1, 3)
    assert stats["k_core_rounds"] == 2
    assert (stats["users"], stats["items"], stats["interactions"]) == (4, 4, 14)
    assert stats["avg_seq_len"] == 3.5 and (stats["min_seq_len"], stats["max_seq_len"]) == (3, 4)
    assert (stats["items_with_image"], stats["image_coverage"]) == (3, 0.75)
    assert stats["interactions_shifted_to_break_ties"] == 3 and stats["shifted_off_their_day"] == 0
    assert (stats["first_day"], stats["last_day"]) == ("2014-01-01", "2014-01-06")
    assert json.loads((out / "sci" / "sci.stats.json").read_text()) == stats
    assert sorted(p.name for p in (out / "sci").iterdir()) == ["sci.inter", "sci.item", "sci.stats.json"]


def test_inter_order_and_ties(converted):
    out, _ = converted
    rows = read_tsv(out / "sci" / "sci.inter")
    assert rows[0] == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    expected = [[u, i, str(r), str(t)] for u, seq in EXPECTED.items() for i, r, t in seq]
    assert rows[1:] == expected
    for seq in EXPECTED.values():  # strictly increasing as RecBole stores them (float32)
        assert (np.diff(np.array([t for _, _, t in seq], dtype=np.float32)) > 0).all()


def test_item_text_and_image(converted):
    out, _ = converted
    rows = read_tsv(out / "sci" / "sci.item")
    assert rows[0] == ["item_id:token", "text:token_seq", "image_url:token"]
    items = {row[0]: row[1:] for row in rows[1:]}
    assert list(items) == ["i1", "i2", "i3", "i4"]
    assert items["i1"] == ["Lab & Bench Scale 500g Industrial & Scientific Lab Scales Acme", "http://hi/i1.jpg"]
    assert items["i2"] == ["Beaker Glassco", "http://lo/i2.jpg"]  # first record wins; low-res when no high-res
    assert items["i3"] == ["Pipette tips Lab", ""]
    assert len(items["i4"][0]) <= 512 and items["i4"][0] == ("word " * 103)[:512].rstrip()
    assert items["i4"][1] == "http://hi/i4.jpg"


def test_helpers():
    assert conv.clean_text("a &amp;lt;i&amp;gt;b&lt;/i&gt; <p>c</p>\n d") == "a b c d"
    assert conv.break_ties([5, 5, 9, 9, 9]) == [5, 133, 261, 389, 517]  # never behind the previous + 128
    assert conv.k_core([("a", "x", 1.0, 1)] * 2, 2) == ([("a", "x", 1.0, 1)] * 2, 0)


def test_cli_several_domains_and_recbole_split(raw, tmp_path):
    out = tmp_path / "atomic"
    done = subprocess.run(
        [sys.executable, str(REPO / "feature_extraction" / "amazon2018.py"), "--raw", str(raw), "--domains",
         "Scientific", "Pantry", "--names", "sci", "pan", "--out", str(out), "--min-inter", "3", "--no-progress"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Pantry.csv (csv)" in done.stdout and "Scientific_5.json.gz (5core)" in done.stdout
    assert "pan: 4 users, 4 items, 14 interactions, avg. length 3.50, image coverage 75.00%" in done.stdout
    assert not (REPO / "properties" / "dataset" / "pan.yaml").exists()
    # the csv and the json sources hold the same interactions: identical output
    assert (out / "pan" / "pan.inter").read_text() == (out / "sci" / "sci.inter").read_text()
    assert (out / "pan" / "pan.item").read_text() == (out / "sci" / "sci.item").read_text()

    config = recbole_mmm4rec.build_config("SASRec", "pan", config_dict={
        "data_path": str(out), "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "show_progress": False,
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)", "state": "WARNING"})
    dataset = create_dataset(config)
    assert (dataset.user_num - 1, dataset.item_num - 1, dataset.inter_num) == (4, 4, 14)
    _, valid, test = dataset.build()
    # SASRec's dataset makes one sample per prefix (n - 1 per user); RecBole's leave-one-out gives the last to
    # test and, when a user has at least 3 samples (4 interactions), the second-to-last to valid
    for split, position, min_len in ((test, -1, 3), (valid, -2, 4)):
        users = dataset.id2token("user_id", split.inter_feat["user_id"].numpy())
        targets = dataset.id2token("item_id", split.inter_feat["item_id"].numpy())
        assert dict(zip(users, targets)) == {u: seq[position][0] for u, seq in EXPECTED.items() if len(seq) >= min_len}


def test_write_yaml_and_check(raw, tmp_path):
    out = tmp_path / "atomic"
    conv.convert_domain(str(raw), "Scientific", str(out), "sci", min_inter=3, inter_kind="5core", write_yaml=True,
                        yaml_dir=str(tmp_path), progress=False, log=lambda *args: None)
    yaml_text = (tmp_path / "sci.yaml").read_text()
    assert "TIME_FIELD: timestamp" in yaml_text and "inter: [user_id, item_id, timestamp]" in yaml_text
    # the check tool accepts the atomic files and fails only for the features file, not made yet
    done = subprocess.run([sys.executable, "-m", "recbole_mmm4rec.check", str(out / "sci"), "--feature-dims",
                           "text=768"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == 1 and "sci.features.npz is missing" in fails[0], done.stdout
    # the sample's users u2 and u3 have 3 interactions: too few for train + valid + test
    assert "FAILED: 1 failure(s), 1 warning(s)" in done.stdout
    assert "fewer than 4 interactions" in done.stdout, done.stdout


def test_missing_files_fail_clearly(raw, tmp_path):
    with pytest.raises(conv.SourceFormatError, match="no interaction file for 'Office'"):
        conv.convert_domain(str(raw), "Office", str(tmp_path), progress=False, log=lambda *args: None)
    with pytest.raises(conv.SourceFormatError, match="csv"):
        conv.convert_domain(str(raw), "Scientific", str(tmp_path), inter_kind="csv", progress=False,
                            log=lambda *args: None)
