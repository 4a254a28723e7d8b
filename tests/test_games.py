"""The games dataset: feature_extraction/import_llmrank.py on the real source and on broken ones, and its
feature file built on demand (build_text_features, recbole_mmm4rec/data/on_demand.py)."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

import recbole_mmm4rec
from conftest import TINY, prepare
from recbole_mmm4rec.data.features import FeatureFileError, read_features
from recbole_mmm4rec.data.on_demand import ensure_text_features
from recbole_mmm4rec.quick_start import PROJECT_ROOT

SOURCE = Path("/work/shared/data/amazon2018_games")
GAMES = PROJECT_ROOT / "atomic_data" / "games"


def load_importer():
    """The converter is a script, not a package module: load it from its path."""
    path = PROJECT_ROOT / "feature_extraction" / "import_llmrank.py"
    spec = importlib.util.spec_from_file_location("import_llmrank", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


importer = load_importer()


def test_the_bundled_games_files_are_what_the_importer_makes_of_the_source(tmp_path):
    if not SOURCE.is_dir():
        pytest.skip(f"{SOURCE} is not available")
    stats = importer.convert(str(SOURCE), "games", str(tmp_path), log=lambda *args: None)
    assert (stats["users"], stats["items"], stats["interactions"]) == (50546, 16859, 440264)  # data/README.md
    assert (stats["min_seq_len"], stats["max_seq_len"]) == (5, 50)
    for name in ("games.inter", "games.item"):
        assert (tmp_path / "games" / name).read_bytes() == (GAMES / name).read_bytes(), name
    committed = json.loads((GAMES / "games.stats.json").read_text())
    assert {k: committed[k] for k in stats if k != "source"} == {k: v for k, v in stats.items() if k != "source"}


def write_source(folder, test_rows, valid_rows, items):
    folder.mkdir()
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    for split, rows in (("test", test_rows), ("valid", valid_rows)):
        (folder / f"G.{split}.inter").write_text(header + "".join(f"{u}\t{h}\t{t}\n" for u, h, t in rows))
    (folder / "G.item").write_text("item_id:token\ttitle:token_seq\n" + "".join(f"{i}\t{t}\n" for i, t in items))
    return folder


ITEMS = [(0, "A  game"), (1, "B"), (2, "C"), (3, "D")]


def test_a_small_source_becomes_one_row_per_interaction_in_order(tmp_path):
    src = write_source(tmp_path / "src", [(0, "0 1", 2), (1, "3 2 1", 0)], [(0, "0", 1), (1, "3 2", 1)], ITEMS)
    importer.convert(str(src), "g", str(tmp_path / "out"), log=lambda *args: None)
    inter = (tmp_path / "out" / "g" / "g.inter").read_text().splitlines()
    assert inter == ["user_id:token\titem_id:token\ttimestamp:float", "0\t0\t1", "0\t1\t2", "0\t2\t3",
                     "1\t3\t1", "1\t2\t2", "1\t1\t3", "1\t0\t4"]
    assert (tmp_path / "out" / "g" / "g.item").read_text().splitlines()[1] == "0\tA game"


@pytest.mark.parametrize("valid, items, message", [
    ([(0, "0", 2), (1, "3 2", 1)], ITEMS, "G.valid.inter:2: the valid row of user 0 is not the test row"),
    ([(0, "0", 1)], ITEMS, "G.test.inter:3: user 1 has no valid row"),
    ([(0, "0", 1), (1, "3 2", 1)], ITEMS[:3], "G.item: item 3 of the .inter files has no title"),
])
def test_a_broken_source_is_refused_naming_the_file_and_line(tmp_path, valid, items, message):
    src = write_source(tmp_path / "src", [(0, "0 1", 2), (1, "3 2 1", 0)], valid, items)
    with pytest.raises(importer.SourceFormatError, match=message):
        importer.convert(str(src), "g", str(tmp_path / "out"), log=lambda *args: None)


@pytest.fixture
def small_games(tmp_path):
    """The first 60 users of games, their items' titles, and no feature file."""
    folder = tmp_path / "minigames"
    folder.mkdir()
    lines = (GAMES / "games.inter").read_text().splitlines()
    rows = [lines[0]] + [line for line in lines[1:] if int(line.split("\t")[0]) < 60]
    (folder / "minigames.inter").write_text("\n".join(rows) + "\n")
    used = {line.split("\t")[1] for line in rows[1:]}
    items = (GAMES / "games.item").read_text().splitlines()
    (folder / "minigames.item").write_text("\n".join([items[0]] + [i for i in items[1:] if i.split("\t")[0] in used]) + "\n")
    return folder, len(used)


def test_missing_text_features_are_built_once_when_the_dataset_asks_for_it(small_games):
    folder, n_items = small_games
    logged = []
    path = ensure_text_features(str(folder), log=logged.append)
    features = read_features(path)
    assert features.tables["text"].shape == (n_items, 384) and len(features.tokens) == n_items
    assert any("is missing: encoding the item texts" in line for line in logged)
    written = os.path.getmtime(path)
    ensure_text_features(str(folder), log=logged.append)  # up to date: not encoded again
    assert os.path.getmtime(path) == written and "skipped" in logged[-1]


def test_a_dataset_with_build_text_features_loads_without_a_feature_file(small_games):
    folder, n_items = small_games
    config = recbole_mmm4rec.build_config("MMM4Rec", "minigames", config_dict={
        **TINY, "data_path": str(folder.parent), "build_text_features": True, "feature_dims": {"text": 384},
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]}})
    dataset = prepare(config)[1]
    table, present = dataset.item_features["text"]
    assert table.shape == (n_items + 1, 384) and bool(present[1:].all())
    assert (folder / "minigames.features.npz").is_file()


def test_without_build_text_features_a_missing_feature_file_is_still_an_error(small_games):
    folder, _ = small_games
    config = recbole_mmm4rec.build_config("MMM4Rec", "minigames", config_dict={
        **TINY, "data_path": str(folder.parent), "load_col": {"inter": ["user_id", "item_id", "timestamp"]}})
    with pytest.raises(FeatureFileError, match="minigames.features.npz"):
        prepare(config)
    assert not (folder / "minigames.features.npz").exists()


def test_an_item_without_text_stops_the_build_naming_it(small_games):
    folder, _ = small_games
    item_file = folder / "minigames.item"
    lines = item_file.read_text().splitlines()
    token = lines[1].split("\t")[0]
    item_file.write_text("\n".join([lines[0], f"{token}\t"] + lines[2:]) + "\n")
    with pytest.raises(FeatureFileError, match=f"Cannot build the text features of {folder}.*{token}"):
        ensure_text_features(str(folder), log=lambda *args: None)


def test_games_builds_its_feature_file_which_is_not_committed():
    config = recbole_mmm4rec.build_config("MMM4Rec", "games", config_dict={**TINY})
    assert config["build_text_features"] is True and config["feature_dims"] == {"text": 384}
    assert "atomic_data/games/games.features.npz" in (PROJECT_ROOT / ".gitignore").read_text().splitlines()
