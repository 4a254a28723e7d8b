"""Convert a MovieLens ``ml-latest-small``-layout folder (ratings.csv, movies.csv) into RecBole atomic files.

Input folder (GroupLens csv files: comma-separated, one header line, UTF-8, fields with commas
in double quotes):

- ``ratings.csv``: ``userId,movieId,rating,timestamp``; integer ids, ``rating`` 0.5 to 5 stars,
  ``timestamp`` in unix seconds (many ratings of one user share a second).
- ``movies.csv``: ``movieId,title,genres``; title with the release year, genres separated by ``|``
  (``(no genres listed)`` for none).

Output folder ``OUT/NAME/``: ``NAME.inter`` (``user_id:token item_id:token timestamp:float``),
``NAME.item`` (``item_id:token text:token_seq``) and ``NAME.stats.json``. User tokens are the
userIds, item tokens the movieIds. Text features are made afterwards by
``feature_extraction/encode_text.py``.

Implicit feedback: every rating, whatever its value, is one interaction (the user watched and
rated the movie); the rating value is not written. Only movies with at least one rating become
items. An item's text is ``"<title>. <genre>, <genre>, ..."`` (just the title when the movie has
no genres), runs of whitespace collapsed.

Order and timestamps. RecBole's leave-one-out split orders each user's interactions by timestamp
alone (``eval_args: {split: {LS: valid_and_test}, order: TO}``) and holds float fields as float32,
which has 24 significant bits: unix seconds (~1e9) are 64 to 128 s apart there, and even seconds
since the first rating of the dataset (a span of 21.8 years, ~6.9e8 s) cannot all be exact. So:

1. Order: each user's ratings are sorted by (timestamp, movieId). Within one second the source's
   order means nothing (the file lists a user's ratings by movieId); movieId makes it deterministic
   and independent of the file's order.
2. Origin: ``timestamp`` holds seconds since ORIGIN, midnight UTC of the day of the dataset's first
   rating (written to the stats as ``origin_unix``; unix time = timestamp + origin_unix).
3. Grid: STEP is the smallest power of two (in seconds) such that every timestamp is below
   2^24 * STEP; then every multiple of STEP there is exact in float32, and so is every
   difference of two of them (what a time-aware model uses: MMM4Rec's eq. 5). Each time is
   rounded down to a multiple of STEP; a rating that would not come strictly after the previous
   one of its user is pushed to previous + STEP. A burst of n ratings within a step is spread
   over n steps, so timestamps drift forward (the stats give the largest drift).
4. Check: for every user, in float32 as RecBole sees it, every timestamp equals the written
   integer and the timestamps strictly increase; otherwise the converter stops with an error.

Usage::

    python feature_extraction/import_movielens.py SRC_DIR --name movielens --out atomic_data
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import defaultdict
from datetime import datetime, timezone
from typing import Callable, NamedTuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # atomic_files.py, beside this script
from atomic_files import INTER_HEADER, ITEM_HEADER, SourceFormatError, require, size, write_json, write_rows  # noqa: E402

RATINGS_COLUMNS = ("userId", "movieId", "rating", "timestamp")
MOVIES_COLUMNS = ("movieId", "title", "genres")
NO_GENRES = "(no genres listed)"
FLOAT32_INTEGERS = 2 ** 24  # float32 holds every integer below this exactly
DAY = 86400


class Rating(NamedTuple):
    """One line of ratings.csv: a user rated a movie at a time."""

    user: int
    movie: int
    time: int
    where: str  # "file:line" for error messages


# ----------------------------------------------------------------------------- reading the source


def _rows(path: str, columns: tuple):
    """Yield ``(where, {column: value})`` for each data line of a csv file with these header columns."""
    with open(require(path), encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        missing = [column for column in columns if column not in header]
        if missing:
            raise SourceFormatError(f"{path}:1: header {header} lacks the column(s) {missing}")
        positions = {column: header.index(column) for column in columns}
        for fields in reader:
            where = f"{path}:{reader.line_num}"
            if len(fields) != len(header):
                raise SourceFormatError(
                    f"{where}: expected {len(header)} comma-separated fields {header}, got {len(fields)}: {fields}"
                )
            yield where, {column: fields[position] for column, position in positions.items()}


def _int_field(row: dict, field: str, where: str) -> int:
    value = row[field].strip()
    if not value.isdigit():
        raise SourceFormatError(f"{where}: field '{field}' is {value!r}, not a non-negative integer")
    return int(value)


def _check_rating(row: dict, where: str) -> None:
    """The rating value is not kept, but a line whose rating is not a number is malformed."""
    try:
        float(row["rating"])
    except ValueError:
        raise SourceFormatError(f"{where}: field 'rating' is {row['rating']!r}, not a number") from None


def read_ratings(path: str) -> list:
    """Every line of ratings.csv as a Rating, in file order; a (user, movie) pair may appear once."""
    ratings, first_line = [], {}
    for where, row in _rows(path, RATINGS_COLUMNS):
        rating = Rating(_int_field(row, "userId", where), _int_field(row, "movieId", where),
                        _int_field(row, "timestamp", where), where)
        _check_rating(row, where)
        key = (rating.user, rating.movie)
        if key in first_line:
            raise SourceFormatError(f"{where}: user {key[0]} rated movie {key[1]} already at {first_line[key]}")
        first_line[key] = where
        ratings.append(rating)
    if not ratings:
        raise SourceFormatError(f"{path}: no ratings")
    return ratings


def movie_text(title: str, genres: str) -> str:
    """``"<title>. <genre>, <genre>"``; just the title for no genres; whitespace collapsed."""
    title = " ".join(title.split())
    names = [" ".join(g.split()) for g in genres.split("|") if g.strip() and g.strip() != NO_GENRES]
    return f"{title}. {', '.join(names)}" if names else title


def read_movies(path: str) -> dict:
    """{movieId: text} of movies.csv; ids unique, titles non-empty."""
    texts, first_line = {}, {}
    for where, row in _rows(path, MOVIES_COLUMNS):
        movie = _int_field(row, "movieId", where)
        if movie in first_line:
            raise SourceFormatError(f"{where}: movieId {movie} already listed at {first_line[movie]}")
        if not row["title"].strip():
            raise SourceFormatError(f"{where}: field 'title' of movieId {movie} is empty")
        first_line[movie] = where
        texts[movie] = movie_text(row["title"], row["genres"])
    return texts


# ----------------------------------------------------------------------------- order and timestamps


def user_sequences(ratings: list) -> dict:
    """{user: [ratings sorted by (timestamp, movieId)]}, users in id order."""
    by_user = defaultdict(list)
    for rating in ratings:
        by_user[rating.user].append(rating)
    return {user: sorted(by_user[user], key=lambda r: (r.time, r.movie)) for user in sorted(by_user)}


def origin_of(ratings: list) -> int:
    """Midnight UTC of the day of the first rating, in unix seconds."""
    return min(r.time for r in ratings) // DAY * DAY


def smallest_step(largest: int) -> int:
    """The smallest power of two ``step`` with ``largest < 2^24 * step`` (all multiples exact in float32)."""
    step = 1
    while largest >= FLOAT32_INTEGERS * step:
        step *= 2
    return step


def place_on_grid(times: list, origin: int, step: int) -> list:
    """Seconds since ``origin`` rounded down to multiples of ``step``, each pushed to at least previous + step."""
    stamps = []
    for time in times:
        stamp = (time - origin) // step * step
        stamps.append(stamp if not stamps else max(stamp, stamps[-1] + step))
    return stamps


def timestamps(sequences: dict, origin: int) -> tuple:
    """({user: stamps}, step): the finest grid on which every pushed timestamp is exact in float32."""
    step = smallest_step(max(seq[-1].time for seq in sequences.values()) - origin)
    while True:
        stamps = {user: place_on_grid([r.time for r in seq], origin, step) for user, seq in sequences.items()}
        if max(s[-1] for s in stamps.values()) < FLOAT32_INTEGERS * step:
            return stamps, step
        step *= 2  # the pushes went past the exact range: a coarser grid


def check_float32(seq: list, stamps: list) -> None:
    """As RecBole sees them (float32): every timestamp exact and strictly increasing within the user."""
    as_float32 = np.asarray(stamps, dtype=np.int64).astype(np.float32)
    inexact = np.flatnonzero(as_float32.astype(np.int64) != np.asarray(stamps, dtype=np.int64))
    if inexact.size:
        k = inexact[0]
        raise SourceFormatError(f"{seq[k].where}: user {seq[k].user}'s timestamp {stamps[k]} is not exact in float32")
    not_after = np.flatnonzero(np.diff(as_float32) <= 0)
    if not_after.size:
        k = not_after[0] + 1
        raise SourceFormatError(
            f"{seq[k].where}: user {seq[k].user}'s timestamp {stamps[k]} does not come strictly after "
            f"{stamps[k - 1]} ({seq[k - 1].where}) in float32"
        )


# ----------------------------------------------------------------------------- writing


def write_inter(path: str, sequences: dict, stamps: dict) -> int:
    """One row per rating, users in id order, each user's rows in time order."""
    rows = ((user, rating.movie, stamp) for user, seq in sequences.items() for rating, stamp in zip(seq, stamps[user]))
    return write_rows(path, INTER_HEADER, rows)


def write_items(path: str, items: list, texts: dict) -> None:
    """``item_id:token  text:token_seq`` for the rated movies, in movieId order."""
    write_rows(path, ITEM_HEADER, ((movie, texts[movie]) for movie in items))


def _utc(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _time_stats(sequences: dict, stamps: dict, origin: int, step: int) -> dict:
    """Time span, the grid, and how much the grid moved and merged the real times."""
    times = [r.time for seq in sequences.values() for r in seq]
    shift = np.array([s - (r.time - origin) for u, seq in sequences.items() for r, s in zip(seq, stamps[u])])
    rounded = np.array([(r.time - origin) // step * step for seq in sequences.values() for r in seq])
    pushed = np.concatenate([stamps[u] for u in sequences]) != rounded
    real_gaps = np.concatenate([np.diff([r.time for r in seq]) for seq in sequences.values()])
    gaps = np.concatenate([np.diff(s) for s in stamps.values()])
    return {
        "first_rating": _utc(min(times)),
        "last_rating": _utc(max(times)),
        "time_span_days": round((max(times) - min(times)) / DAY, 1),
        "origin_unix": origin,
        "origin_utc": _utc(origin),
        "grid_step_seconds": step,
        "ratings_in_the_same_second_as_the_previous": int((real_gaps == 0).sum()),
        "real_gaps_below_step": int((real_gaps < step).sum()),
        "gaps_equal_to_step": int((gaps == step).sum()),
        "interactions_pushed": int(pushed.sum()),
        "max_drift_seconds": int(shift.max()),
        "mean_drift_seconds": round(float(shift.mean()), 1),
        "timestamp": (
            f"seconds since {_utc(origin)} (unix {origin}) on a {step}-second grid, exact in float32: each user's "
            f"ratings sorted by (timestamp, movieId), each time rounded down to a multiple of {step} s and pushed "
            f"to previous + {step} s where needed so that timestamps strictly increase within a user"
        ),
    }


def convert(src_dir: str, name: str, out: str, log: Callable = print) -> dict:
    """Convert ``src_dir`` into ``out/name/``; returns the statistics also written to ``name.stats.json``."""
    ratings_path = os.path.join(src_dir, "ratings.csv")
    ratings = read_ratings(ratings_path)
    texts = read_movies(os.path.join(src_dir, "movies.csv"))
    unknown = next((r for r in ratings if r.movie not in texts), None)
    if unknown:
        raise SourceFormatError(f"{unknown.where}: movieId {unknown.movie} is not in movies.csv")

    sequences = user_sequences(ratings)
    origin = origin_of(ratings)
    stamps, step = timestamps(sequences, origin)
    for user, seq in sequences.items():
        check_float32(seq, stamps[user])
    items = sorted({r.movie for r in ratings})
    if len(items) < len(texts):
        log(f"{len(texts) - len(items)} movie(s) of movies.csv have no rating: left out")

    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    inter_path = os.path.join(folder, name + ".inter")
    item_path = os.path.join(folder, name + ".item")
    stats_path = os.path.join(folder, name + ".stats.json")
    n_inter = write_inter(inter_path, sequences, stamps)
    write_items(item_path, items, texts)

    lengths = [len(seq) for seq in sequences.values()]
    stats = {
        "source": os.path.abspath(src_dir),
        "users": len(sequences),
        "items": len(items),
        "movies_in_movies_csv": len(texts),
        "interactions": n_inter,
        "avg_seq_len": round(float(np.mean(lengths)), 4),
        "min_seq_len": int(min(lengths)),
        "max_seq_len": int(max(lengths)),
        "feedback": "implicit: every rating (0.5 to 5 stars) is one interaction; the rating value is not kept",
        "order_checked": "for every user, in float32: timestamps exact and strictly increasing",
        **_time_stats(sequences, stamps, origin, step),
    }
    write_json(stats_path, stats)
    for path in (inter_path, item_path, stats_path):
        log(f"wrote {path} ({size(path)})")
    log(json.dumps(stats, indent=2))
    return stats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src_dir", help="folder holding MovieLens ratings.csv and movies.csv")
    parser.add_argument("--name", default="movielens", help="dataset name: output goes to OUT/NAME/NAME.* "
                                                            "(default: movielens)")
    parser.add_argument("--out", default="atomic_data", help="output root (default: atomic_data)")
    args = parser.parse_args(argv)
    try:
        convert(args.src_dir, args.name, args.out)
    except SourceFormatError as err:
        sys.exit(f"import_movielens: {err}")


if __name__ == "__main__":
    main()
