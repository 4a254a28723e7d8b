"""Tests of feature_extraction/import_movielens.py on tiny hand-made sources, and of the bundled
atomic_data/movielens as RecBole loads it through the project."""

import json
from pathlib import Path

import numpy as np
import pytest
from recbole.data import create_dataset, data_preparation

import recbole_mmm4rec
from conftest import TINY, load_script
from recbole_mmm4rec.data.features import read_features

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "atomic_data" / "movielens"
SOURCE = Path("/work/shared/data/movielens_latest_small")
T0 = 1_000_000_000  # 2001-09-09 01:46:40 UTC; the day starts at T0 - 6400
YEAR = 365 * 86400

importer = load_script("import_movielens")

MOVIES = [
    "movieId,title,genres",
    "1,Toy Story (1995),Adventure|Animation|Children",
    '2,"American President, The (1995)",Comedy|Drama|Romance',
    "3,Scorpio Rising (1964),(no genres listed)",
    "4,Never Rated (2000),Drama",
]


def write_source(folder, ratings, movies=MOVIES):
    """A MovieLens-layout folder; ratings = csv lines after the header."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text("\n".join(["userId,movieId,rating,timestamp", *ratings]) + "\n")
    (folder / "movies.csv").write_text("\n".join(movies) + "\n")
    return folder


def convert(tmp_path, ratings, movies=MOVIES):
    src = write_source(tmp_path / "src", ratings, movies)
    stats = importer.convert(str(src), "tiny", str(tmp_path / "out"), log=lambda *args: None)
    folder = tmp_path / "out" / "tiny"
    rows = [line.split("\t") for line in (folder / "tiny.inter").read_text().splitlines()]
    return stats, folder, rows


# ----------------------------------------------------------------------------- tiny sources


def test_ties_in_one_second_are_ordered_by_movie_and_one_step_apart(tmp_path):
    # User 7 rates three movies in one second (listed out of movieId order) and one 2 s later.
    ratings = [f"7,3,4.0,{T0}", f"7,1,0.5,{T0}", f"7,2,5.0,{T0}", f"7,4,3.5,{T0 + 2}", f"8,1,3.0,{T0 + 10}"]
    stats, folder, rows = convert(tmp_path, ratings)
    assert np.float32(T0) == np.float32(T0 + 2)  # why: raw unix seconds would tie in RecBole's float32
    assert rows[0] == ["user_id:token", "item_id:token", "timestamp:float"]
    start = T0 - stats["origin_unix"]
    assert stats["origin_unix"] % 86400 == 0 and stats["grid_step_seconds"] == 1
    assert rows[1:] == [["7", "1", str(start)], ["7", "2", str(start + 1)], ["7", "3", str(start + 2)],
                        ["7", "4", str(start + 3)], ["8", "1", str(start + 10)]]
    assert (stats["users"], stats["items"], stats["interactions"], stats["movies_in_movies_csv"]) == (2, 4, 5, 4)
    assert (stats["interactions_pushed"], stats["max_drift_seconds"]) == (3, 2)
    assert json.loads((folder / "tiny.stats.json").read_text()) == stats


def test_item_text_is_title_and_genres_for_rated_movies_only(tmp_path):
    _, folder, _ = convert(tmp_path, [f"1,1,4.0,{T0}", f"1,2,4.0,{T0 + 1}", f"1,3,4.0,{T0 + 2}"])
    assert (folder / "tiny.item").read_text().splitlines() == [
        "item_id:token\ttext:token_seq",
        "1\tToy Story (1995). Adventure, Animation, Children",
        "2\tAmerican President, The (1995). Comedy, Drama, Romance",
        "3\tScorpio Rising (1964)",
    ]


def test_twenty_year_span_uses_a_64_second_grid_exact_in_float32(tmp_path):
    ratings = [f"1,1,4.0,{T0}", f"1,2,4.0,{T0 + 5}", f"1,3,4.0,{T0 + 20 * YEAR}", f"1,4,4.0,{T0 + 20 * YEAR}"]
    stats, _, rows = convert(tmp_path, ratings)
    stamps = np.array([int(row[2]) for row in rows[1:]])
    assert stats["grid_step_seconds"] == 64
    assert (stamps % 64 == 0).all() and (stamps.astype(np.float32).astype(np.int64) == stamps).all()
    assert (np.diff(stamps.astype(np.float32)) > 0).all()
    assert np.diff(stamps)[[0, 2]].tolist() == [64, 64]  # 5 s and 0 s apart: one step each


@pytest.mark.parametrize("line, message", [
    ("1,2,4.0,soon", r"ratings\.csv:3: field 'timestamp' is 'soon', not a non-negative integer"),
    (f"x,2,4.0,{T0}", r"ratings\.csv:3: field 'userId' is 'x'"),
    (f"1,2,good,{T0}", r"ratings\.csv:3: field 'rating' is 'good', not a number"),
    ("1,2,4.0", r"ratings\.csv:3: expected 4 comma-separated fields"),
    (f"1,9,4.0,{T0}", r"ratings\.csv:3: movieId 9 is not in movies\.csv"),
    (f"1,1,3.0,{T0 + 1}", r"ratings\.csv:3: user 1 rated movie 1 already at .*ratings\.csv:2"),
])
def test_bad_rating_line_names_file_line_and_field(tmp_path, line, message):
    src = write_source(tmp_path / "src", [f"1,1,4.0,{T0}", line])
    with pytest.raises(importer.SourceFormatError, match=message):
        importer.convert(str(src), "tiny", str(tmp_path / "out"), log=lambda *args: None)
    assert not (tmp_path / "out" / "tiny" / "tiny.inter").exists()  # nothing written on failure


def test_bad_movies_file_and_cli_error(tmp_path):
    src = write_source(tmp_path / "src", [f"1,1,4.0,{T0}"], MOVIES + ["1,Toy Story again (1995),Comedy"])
    with pytest.raises(SystemExit, match=r"import_movielens: .*movies\.csv:6: movieId 1 already listed at"):
        importer.main([str(src), "--name", "tiny", "--out", str(tmp_path / "out")])


# ----------------------------------------------------------------------------- the bundled dataset


def test_bundled_files_are_what_the_importer_makes_of_the_source(tmp_path):
    if not SOURCE.is_dir():
        pytest.skip(f"{SOURCE} is not available")
    stats = importer.convert(str(SOURCE), "movielens", str(tmp_path), log=lambda *args: None)
    for suffix in (".inter", ".item"):
        assert (tmp_path / "movielens" / f"movielens{suffix}").read_bytes() == \
            (BUNDLED / f"movielens{suffix}").read_bytes()
    bundled = json.loads((BUNDLED / "movielens.stats.json").read_text())
    assert {k: v for k, v in bundled.items() if k not in ("source", "features")} == \
        {k: v for k, v in stats.items() if k != "source"}


def test_recbole_loads_movielens_with_features_for_every_item():
    config = recbole_mmm4rec.build_config("MMM4Rec", "movielens", config_dict=dict(TINY))
    dataset = create_dataset(config)
    assert (dataset.user_num - 1, dataset.item_num - 1, dataset.inter_num) == (671, 9066, 100004)
    text, text_present = dataset.item_features["text"]
    _, image_present = dataset.item_features["image"]
    assert text.shape == (9067, 384) and text_present[1:].all() and not image_present.any()
    assert read_features(str(BUNDLED / "movielens.features.npz")).tables["text"].shape == (9066, 384)

    train, valid, test = data_preparation(config, dataset)
    # As RecBole holds them after building (float32 tensors), each user's timestamps strictly increase.
    users = dataset.inter_feat["user_id"].numpy()
    stamps = dataset.inter_feat["timestamp"].numpy()
    assert stamps.dtype == np.float32
    assert (np.diff(stamps)[users[1:] == users[:-1]] > 0).all()
    # The test target of every user is the last rating in (timestamp, movieId) order: the file's last row.
    file_last = {}
    for line in (BUNDLED / "movielens.inter").read_text().splitlines()[1:]:
        user, item, _ = line.split("\t")
        file_last[user] = item
    split = test._dataset.inter_feat
    test_users = dataset.id2token("user_id", split["user_id"].numpy())
    assert dict(zip(test_users, dataset.id2token("item_id", split["item_id"].numpy()))) == file_last
    assert len(valid._dataset.inter_feat) == 671
