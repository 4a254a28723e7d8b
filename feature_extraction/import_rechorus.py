"""Convert a ReChorus-layout folder (train/dev/test csv) into RecBole atomic files.

Input folder (``<P>`` = file prefix, e.g. ``Office``):

- ``train.csv``, ``dev.csv``, ``test.csv``: tab-separated ``user_id  item_id  time`` with a
  header line; integer ids from 1, ``time`` in unix seconds (day granularity for Amazon).
  ``dev.csv`` / ``test.csv`` hold each user's second-to-last / last interaction;
  ``train.csv`` lists the rest in time order. Further columns (e.g. ReChorus's
  ``neg_items``) are ignored. A source without a ``time`` column is accepted: it is said
  loudly, and ``timestamp`` then holds ordinal positions (1, 2, 3, ...).
- ``<P>.item2index``: ``ASIN<TAB>item id`` (no header).
- ``<P>.text``: ``id<TAB>text`` keyed by ASIN (with a header line).

Output folder ``OUT/NAME/``: ``NAME.inter`` (user, item, timestamp), ``NAME.item``
(item text) and ``NAME.stats.json``. User tokens are the source's user ids, item tokens
the ASINs. Text features are made afterwards by ``feature_extraction/encode_text.py``.

Ties. Timestamps have day granularity, so a user often has several interactions on one
day; RecBole's leave-one-out split orders each user's interactions by timestamp alone
(``eval_args: {split: {LS: valid_and_test}, order: TO}``). To keep the source's order,
the k-th interaction (k = 0, 1, ...) of a user on one timestamp gets ``k * TIE_STEP``
seconds added. TIE_STEP is 128 s, not 1 s, because RecBole turns float fields into
float32 tensors, whose values between 2^30 and 2^31 seconds (2004 to 2038) are 128 s
apart: a smaller step would round away and the ties would come back. Every shifted time
stays on its real day (the largest tie here is 16 interactions, 32 minutes).
The converter then checks, in float32 as RecBole sees it, that each user's timestamps
strictly increase and that sorting by them puts the source's dev item second-to-last
and its test item last; otherwise it stops with an error.

Usage::

    python feature_extraction/import_rechorus.py SRC_DIR --name office --out atomic_data
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # atomic_files.py, beside this script
from atomic_files import (  # noqa: E402
    INTER_HEADER, ITEM_HEADER, SourceFormatError, infer_prefix, require, size, write_json, write_rows)

SPLITS = ("train", "dev", "test")
TIE_STEP = 128  # seconds between tied interactions; see the module docstring
DAY = 86400


@dataclass(frozen=True)
class Event:
    """One row of a source csv file: a user interacted with an item at a time."""

    user: int
    item: int
    time: Optional[int]  # None when the source has no time column
    split: str
    where: str  # "file:line" for error messages


# ----------------------------------------------------------------------------- reading the source


def _int_field(value: str, where: str, field: str) -> int:
    if not value.isdigit():
        raise SourceFormatError(f"{where}: {field} {value!r} is not a non-negative integer")
    return int(value)


def _columns(path: str, header: list) -> tuple:
    """Positions of user_id, item_id and time (None if absent) in a csv header."""
    for needed in ("user_id", "item_id"):
        if needed not in header:
            raise SourceFormatError(f"{path}: header {header} has no '{needed}' column")
    time_col = header.index("time") if "time" in header else None
    return header.index("user_id"), header.index("item_id"), time_col


def read_split(path: str, split: str) -> tuple:
    """Events of one csv file, in file order, and whether the file has a time column."""
    events = []
    with open(require(path), encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        user_col, item_col, time_col = _columns(path, header)
        for line_no, line in enumerate(handle, 2):
            where = f"{path}:{line_no}"
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                raise SourceFormatError(f"{where}: expected {len(header)} tab-separated columns, got {len(parts)}")
            time = None if time_col is None else _int_field(parts[time_col], where, "time")
            user = _int_field(parts[user_col], where, "user_id")
            item = _int_field(parts[item_col], where, "item_id")
            events.append(Event(user, item, time, split, where))
    return events, time_col is not None


def read_item_index(path: str) -> dict:
    """``ASIN<TAB>id`` lines -> {id: ASIN}; both sides unique."""
    asin_of = {}
    seen = set()
    with open(require(path), encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[1].isdigit():
                raise SourceFormatError(f"{path}:{line_no}: expected 'ASIN<TAB>integer', got {line.rstrip()!r}")
            asin, item = parts[0], int(parts[1])
            if asin in seen or item in asin_of:
                raise SourceFormatError(f"{path}:{line_no}: ASIN {asin!r} or item id {item} appears twice")
            seen.add(asin)
            asin_of[item] = asin
    return asin_of


def read_texts(path: str) -> dict:
    """{ASIN: text} from ``id<TAB>text`` lines after a header; runs of whitespace become one space."""
    texts = {}
    with open(require(path), encoding="utf-8") as handle:
        handle.readline()  # header: id, text
        for line_no, line in enumerate(handle, 2):
            asin, sep, text = line.rstrip("\n").partition("\t")
            if not sep:
                raise SourceFormatError(f"{path}:{line_no}: expected 'ASIN<TAB>text', got {line.rstrip()!r}")
            if asin in texts:
                raise SourceFormatError(f"{path}:{line_no}: item {asin!r} appears twice")
            texts[asin] = " ".join(text.split())
    return texts


# ----------------------------------------------------------------------------- sequences


def user_sequences(events: list) -> dict:
    """{user: [events in the source's order]}: train rows in file order, then dev, then test.

    Each user needs exactly one dev and one test row and at least one train row, and the
    times must never go backwards (train in time order, dev not before the last train row,
    test not before dev): otherwise the source's order is not a time order and RecBole's
    split could not reproduce it.
    """
    by_user = defaultdict(lambda: {split: [] for split in SPLITS})
    for event in events:
        by_user[event.user][event.split].append(event)
    sequences = {}
    for user, rows in sorted(by_user.items()):
        if len(rows["dev"]) != 1 or len(rows["test"]) != 1 or not rows["train"]:
            first = next(e for split in SPLITS for e in rows[split])
            raise SourceFormatError(
                f"user {user} has {len(rows['train'])} train, {len(rows['dev'])} dev and {len(rows['test'])} test "
                f"rows (expected at least 1, exactly 1, exactly 1), e.g. {first.where}"
            )
        seq = rows["train"] + rows["dev"] + rows["test"]
        for before, after in zip(seq, seq[1:]):
            if before.time is not None and after.time < before.time:
                raise SourceFormatError(
                    f"{after.where}: user {user}'s interaction at time {after.time} comes after one at "
                    f"{before.time} ({before.where}) in the source's order; it is not a time order"
                )
        sequences[user] = seq
    return sequences


def break_ties(times: list, step: int = TIE_STEP, who: str = "times") -> list:
    """Add ``k * step`` seconds to the k-th of several equal consecutive times (k = 0, 1, ...).

    ``who`` names the sequence in error messages (e.g. "user 7"). Raises if a shifted time
    would leave its day or reach the next real time (the tie would then move past a later
    interaction).
    """
    shifted, rank = [], 0
    for k, time in enumerate(times):
        rank = rank + 1 if k and time == times[k - 1] else 0
        if rank * step >= DAY:
            raise SourceFormatError(
                f"{who}: {rank + 1} interactions share time {time}: {step} s steps would leave the day"
            )
        shifted.append(time + rank * step)
    for k in range(1, len(times)):
        if shifted[k] <= shifted[k - 1]:
            raise SourceFormatError(
                f"{who}: breaking ties with steps of {step} s reaches the next time {times[k]} "
                f"(times {times[max(0, k - 3): k + 1]}); the source's times are finer than a day"
            )
    return shifted


def timestamps(seq: list) -> list:
    """The timestamps written for one user's sequence: tie-broken times, or positions if no time."""
    if seq[0].time is None:
        return list(range(1, len(seq) + 1))
    return break_ties([event.time for event in seq], who=f"user {seq[0].user}")


def check_split_kept(user: int, seq: list, stamps: list, asin_of: dict) -> None:
    """As RecBole sees it (float32 timestamps): strictly increasing, dev item 2nd-to-last, test item last."""
    as_float32 = np.asarray(stamps, dtype=np.float64).astype(np.float32)
    if not (np.diff(as_float32) > 0).all():
        raise SourceFormatError(f"user {user}: timestamps {stamps} do not strictly increase in float32")
    order = np.argsort(as_float32, kind="stable")
    last, second = seq[order[-1]], seq[order[-2]]
    if (last.split, second.split) != ("test", "dev"):
        raise SourceFormatError(
            f"user {user}: sorted by timestamp the last two items are {asin_of[second.item]} ({second.where}) and "
            f"{asin_of[last.item]} ({last.where}), not the source's dev and test items"
        )


# ----------------------------------------------------------------------------- writing


def write_inter(path: str, sequences: dict, stamps: dict, asin_of: dict) -> int:
    """One row per interaction, users in id order, each user's rows in the source's order."""
    rows = ((user, asin_of[event.item], stamp) for user, seq in sequences.items() for event, stamp in zip(seq, stamps[user]))
    return write_rows(path, INTER_HEADER, rows)


def write_items(path: str, asin_of: dict, texts: dict) -> None:
    """``item_id:token  text:token_seq`` for every item of the index, in item id order."""
    write_rows(path, ITEM_HEADER, ((asin_of[item], texts.get(asin_of[item], "")) for item in sorted(asin_of)))


def _date(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d")


def _time_stats(sequences: dict, stamps: dict) -> dict:
    """Time span and how many interactions were shifted to break ties."""
    events = [e for seq in sequences.values() for e in seq]
    if events[0].time is None:
        return {"timestamp": "ordinal position of the interaction in the user's sequence (1, 2, ...); no real time"}
    times = [e.time for e in events]
    shifted = sum(s != e.time for user, seq in sequences.items() for e, s in zip(seq, stamps[user]))
    return {
        "first_day": _date(min(times)),
        "last_day": _date(max(times)),
        "time_span_days": round((max(times) - min(times)) / DAY, 1),
        "day_granularity": all(t % DAY == 0 for t in times),
        "tie_step_seconds": TIE_STEP,
        "interactions_shifted_to_break_ties": shifted,
        "timestamp": (
            f"unix seconds of the source (day granularity); the k-th interaction of a user on the same "
            f"timestamp gets k * {TIE_STEP} s added, so the source's order is kept"
        ),
    }


def convert(src_dir: str, name: str, out: str, prefix: Optional[str] = None, log: Callable = print) -> dict:
    """Convert ``src_dir`` into ``out/name/``; returns the statistics also written to ``name.stats.json``."""
    prefix = prefix or infer_prefix(src_dir, ".item2index")
    asin_of = read_item_index(os.path.join(src_dir, prefix + ".item2index"))
    events, has_time = [], []
    for split in SPLITS:
        rows, timed = read_split(os.path.join(src_dir, split + ".csv"), split)
        events += rows
        has_time.append(timed)
    if any(has_time) and not all(has_time):
        raise SourceFormatError(f"{src_dir}: some csv files have a 'time' column and others do not")
    if not all(has_time):
        log(f"WARNING: {src_dir} has NO timestamps: 'timestamp' will hold each interaction's position "
            f"in its user's sequence (1, 2, 3, ...), not time")
    unknown = next((e for e in events if e.item not in asin_of), None)
    if unknown:
        raise SourceFormatError(f"{unknown.where}: item id {unknown.item} is not in {prefix}.item2index")

    sequences = user_sequences(events)
    stamps = {user: timestamps(seq) for user, seq in sequences.items()}
    for user, seq in sequences.items():
        check_split_kept(user, seq, stamps[user], asin_of)
    texts = read_texts(os.path.join(src_dir, prefix + ".text"))
    without_text = [asin_of[i] for i in sorted(asin_of) if not texts.get(asin_of[i])]
    if without_text:
        log(f"warning: {len(without_text)} item(s) have no text in {prefix}.text, e.g. {without_text[:5]}")

    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    inter_path = os.path.join(folder, name + ".inter")
    item_path = os.path.join(folder, name + ".item")
    stats_path = os.path.join(folder, name + ".stats.json")
    n_inter = write_inter(inter_path, sequences, stamps, asin_of)
    write_items(item_path, asin_of, texts)

    lengths = [len(seq) for seq in sequences.values()]
    stats = {
        "source": os.path.abspath(src_dir),
        "prefix": prefix,
        "users": len(sequences),
        "items": len({e.item for seq in sequences.values() for e in seq}),
        "items_in_index": len(asin_of),
        "interactions": n_inter,
        "avg_seq_len": round(float(np.mean(lengths)), 4),
        "min_seq_len": int(min(lengths)),
        "max_seq_len": int(max(lengths)),
        "items_without_text": len(without_text),
        "split_checked": (
            "for every user, sorted by float32 timestamp: last = test.csv item, second-to-last = dev.csv item"
        ),
        **_time_stats(sequences, stamps),
    }
    write_json(stats_path, stats)
    for path in (inter_path, item_path, stats_path):
        log(f"wrote {path} ({size(path)})")
    log(json.dumps(stats, indent=2))
    return stats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "src_dir", help="folder in ReChorus layout (train.csv, dev.csv, test.csv, <P>.item2index, <P>.text)"
    )
    parser.add_argument("--name", required=True, help="dataset name: output goes to OUT/NAME/NAME.*")
    parser.add_argument("--out", default="atomic_data", help="output root (default: atomic_data)")
    parser.add_argument("--prefix", help="file prefix in SRC_DIR (default: inferred from *.item2index)")
    args = parser.parse_args(argv)
    try:
        convert(args.src_dir, args.name, args.out, args.prefix)
    except SourceFormatError as err:
        sys.exit(f"import_rechorus: {err}")


if __name__ == "__main__":
    main()
