"""Convert raw Amazon Reviews 2018 files into RecBole atomic files, one dataset folder per domain.

Input, per domain ``<D>`` (e.g. ``Industrial_and_Scientific``) in ``--raw DIR``: one of the published
interaction files, looked for in this order (the first that exists is used, and named in the output):

- ``<D>.csv``: ratings only, no header, ``item,user,rating,timestamp`` (the authors' input);
- ``<D>.json.gz``: all reviews, one JSON object per line (``asin``, ``reviewerID``, ``overall``,
  ``unixReviewTime``);
- ``<D>_5.json.gz``: the published 5-core reviews, same format;

and the metadata ``meta_<D>.json.gz`` (one JSON object per line: ``asin``, ``title``, ``category``
(list), ``brand``, ``imageURL`` / ``imageURLHighRes`` (lists)). Lines are parsed with ``json.loads``.

Processing (the paper's preprocessing, /work/shared/AUTHORS_CODE_NOTES.md 3.1-3.2):

1. exact duplicate interactions (same user, item, rating and time) are dropped, the first kept;
   repeated interactions at different times are kept;
2. interactions of items without a metadata record are dropped;
3. users and items with fewer than ``--min-inter`` (5) interactions are dropped, repeatedly, until
   every remaining user and item has at least that many;
4. item text = title, categories, brand (each present part, in this order, joined by spaces), HTML
   entities unescaped, tags removed, whitespace collapsed, cut to ``--max-text-chars`` (512);
   image URL = the first ``imageURLHighRes``, else the first ``imageURL``, else empty. No item is
   dropped for a missing text or image (they are counted).

Output folder ``OUT/NAME/`` (NAME = the lower-cased domain, or ``--names``): ``NAME.inter``
(``user_id:token item_id:token rating:float timestamp:float``, users in token order, each user's rows
by time, ties in file order), ``NAME.item`` (``item_id:token text:token_seq image_url:token``, items
in token order) and ``NAME.stats.json``; with ``--write-yaml`` also ``properties/dataset/NAME.yaml``.
Every file is written to a temporary name first and then renamed, so a crash never leaves half a file.

Ties. Amazon 2018 times have day granularity, so a user often has several interactions on one day.
RecBole orders each user's interactions by timestamp alone for its leave-one-out split and stores
float fields as float32, whose values between 2^30 and 2^31 seconds (2004 to 2038) are 128 s apart.
As in ``import_rechorus.py``, each user's interactions are sorted by time (ties in file order) and
every timestamp is raised to at least the previous one + ``TIE_STEP`` = 128 s: on day-granular data
the k-th interaction of a user on one day gets exactly ``k * 128`` s added (it stays on its day for up
to 675 ties), and a 1-second step would round away in float32 and bring the ties back. The converter
then checks in float32, as RecBole sees them, that each user's timestamps strictly increase (a time
that would collide after rounding is raised by further steps), so RecBole's last and second-to-last
items are the user's latest ones in file order.

Usage::

    python feature_extraction/amazon2018.py --raw RAW_DIR --domains Industrial_and_Scientific Prime_Pantry \\
        --names scientific pantry --out atomic_data [--write-yaml]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import html
import json
import os
import re
import sys
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Callable, Iterable, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # atomic_files.py, beside this script
from atomic_files import SourceFormatError, atomic_write, write_json  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    def tqdm(iterable, **_):
        return iterable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIE_STEP = 128  # seconds; see the module docstring
DAY = 86400
INTER_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
ITEM_HEADER = ["item_id:token", "text:token_seq", "image_url:token"]
# (kind, file name pattern) in order of preference
INTER_FILES = (("csv", "{d}.csv"), ("full", "{d}.json.gz"), ("5core", "{d}_5.json.gz"))
TAG = re.compile(r"<[^>]*>")


# ----------------------------------------------------------------------------- reading


def _open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def _lines(path: str, progress: bool) -> Iterable:
    """(line number, line) of a (gzip) text file, with a progress bar (lines read)."""
    with _open_text(path) as handle:
        yield from enumerate(tqdm(handle, desc=os.path.basename(path), unit=" lines", disable=not progress,
                                  mininterval=2.0), 1)


def find_inter_file(raw: str, domain: str, kind: str = "auto") -> tuple:
    """(kind, path) of the interaction file to use for ``domain``."""
    candidates = [(k, os.path.join(raw, pattern.format(d=domain))) for k, pattern in INTER_FILES
                  if kind in ("auto", k)]
    for found_kind, path in candidates:
        if os.path.isfile(path):
            return found_kind, path
    raise SourceFormatError(f"{raw}: no interaction file for {domain!r}; looked for "
                            f"{[os.path.basename(p) for _, p in candidates]}")


def read_interactions(path: str, kind: str, progress: bool = True, log: Callable = print) -> list:
    """[(user, item, rating, time)] in file order. Unreadable lines are skipped and counted."""
    rows, bad, example = [], 0, None
    for line_no, line in _lines(path, progress):
        try:
            if kind == "csv":
                item, user, rating, time = next(csv.reader([line]))
            else:
                record = json.loads(line)
                item, user, rating, time = (record["asin"], record["reviewerID"], record["overall"],
                                            record["unixReviewTime"])
            rows.append((str(user), str(item), float(rating), int(float(time))))
        except (ValueError, KeyError, TypeError, StopIteration):
            bad += 1
            example = example or f"{path}:{line_no}"
    if bad:
        log(f"warning: skipped {bad} unreadable line(s) in {path}, e.g. {example}")
    if not rows:
        raise SourceFormatError(f"{path}: no interaction could be read")
    return rows


def _first_url(value) -> str:
    if isinstance(value, str):
        value = [value]
    for url in value or []:
        if isinstance(url, str) and url.strip():
            return url.strip()
    return ""


def clean_text(value) -> str:
    """HTML entities unescaped, tags removed, whitespace collapsed; lists are joined by spaces."""
    if isinstance(value, (list, tuple)):
        return " ".join(filter(None, (clean_text(v) for v in value)))
    if not isinstance(value, str):
        return ""
    text = TAG.sub(" ", html.unescape(html.unescape(value)))  # twice: titles hold "&amp;lt;b&amp;gt;"
    return " ".join(text.split())


def item_text(record: dict, max_chars: int = 512) -> str:
    """Title, categories and brand of a metadata record, cleaned, cut to ``max_chars`` characters."""
    parts = [clean_text(record.get(key)) for key in ("title", "category", "brand")]
    text = " ".join(p for p in parts if p)
    return text[:max_chars].rstrip()


def image_url(record: dict) -> str:
    """The first high-resolution image URL, else the first image URL, else ''."""
    return _first_url(record.get("imageURLHighRes")) or _first_url(record.get("imageURL"))


def read_meta(path: str, wanted: set, max_chars: int, progress: bool = True, log: Callable = print) -> dict:
    """{asin: (text, image URL)} for the wanted items; the first record of an ASIN wins."""
    meta, bad = {}, 0
    for _, line in _lines(path, progress):
        try:
            record = json.loads(line)
            asin = record["asin"]
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if asin in wanted and asin not in meta:
            meta[asin] = (item_text(record, max_chars), image_url(record))
    if bad:
        log(f"warning: skipped {bad} unreadable line(s) in {path}")
    return meta


# ----------------------------------------------------------------------------- processing


def drop_duplicates(rows: list) -> list:
    """Rows with an exact duplicate earlier in the file removed (first occurrence kept, order kept)."""
    seen, kept = set(), []
    for row in rows:
        if row not in seen:
            seen.add(row)
            kept.append(row)
    return kept


def k_core(rows: list, min_inter: int) -> tuple:
    """Rows of users and items with at least ``min_inter`` rows each, filtered until stable; and the rounds."""
    rounds = 0
    while True:
        users = Counter(r[0] for r in rows)
        items = Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= min_inter and items[r[1]] >= min_inter]
        if len(kept) == len(rows):
            return rows, rounds
        rows, rounds = kept, rounds + 1


def break_ties(times: list, step: int = TIE_STEP) -> list:
    """Time-sorted times made strictly increasing in float32: each at least the previous one + ``step``."""
    out = []
    for time in times:
        stamp = time if not out else max(time, out[-1] + step)
        while out and np.float32(stamp) <= np.float32(out[-1]):  # float32 rounding collision
            stamp += step
        out.append(stamp)
    return out


def user_sequences(rows: list) -> dict:
    """{user: [(item, rating, time, timestamp)]}, users in token order, rows by time (ties in file order)."""
    by_user = defaultdict(list)
    for user, item, rating, time in rows:
        by_user[user].append((item, rating, time))
    sequences = {}
    for user in sorted(by_user):
        seq = sorted(by_user[user], key=lambda r: r[2])  # stable: ties keep file order
        stamps = break_ties([r[2] for r in seq])
        sequences[user] = [(item, rating, time, stamp) for (item, rating, time), stamp in zip(seq, stamps)]
    return sequences


# ----------------------------------------------------------------------------- writing


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_inter(handle, sequences: dict) -> None:
    handle.write("\t".join(INTER_HEADER) + "\n")
    for user, seq in sequences.items():
        for item, rating, _, stamp in seq:
            handle.write(f"{user}\t{item}\t{_fmt(rating)}\t{stamp}\n")


def write_items(handle, items: list, meta: dict) -> None:
    handle.write("\t".join(ITEM_HEADER) + "\n")
    for item in items:
        text, url = meta[item]
        handle.write(f"{item}\t{text}\t{url}\n")


def yaml_text(name: str, domain: str, stats: dict) -> str:
    return (
        f"# Amazon Reviews 2018 \"{domain}\", converted by feature_extraction/amazon2018.py\n"
        f"# ({stats['min_inter']}-core: {stats['users']} users, {stats['items']} items, "
        f"{stats['interactions']} interactions).\n"
        f"# Real timestamps (unix seconds, day granularity); ties within a user are broken by +{TIE_STEP} s steps\n"
        f"# in file order, so that RecBole's leave-one-out split takes the latest items.\n"
        f"# feature_dims: set it once {name}.features.npz exists, e.g. {{text: 768, image: 768}} for SigLIP.\n"
        "USER_ID_FIELD: user_id\n"
        "ITEM_ID_FIELD: item_id\n"
        "TIME_FIELD: timestamp\n"
        "load_col:\n"
        "  inter: [user_id, item_id, timestamp]\n"
        f"# Already {stats['min_inter']}-core: no further filtering.\n"
        "user_inter_num_interval: \"[0,inf)\"\n"
        "item_inter_num_interval: \"[0,inf)\"\n"
    )


def _date(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d")


def table_line(name: str, stats: dict) -> str:
    """The paper's Table I figures on one line."""
    return (f"{name}: {stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions, "
            f"avg. length {stats['avg_seq_len']:.2f}, image coverage {stats['image_coverage']:.2%}")


# ----------------------------------------------------------------------------- one domain


def convert_domain(raw: str, domain: str, out: str, name: Optional[str] = None, min_inter: int = 5,
                   max_text_chars: int = 512, inter_kind: str = "auto", write_yaml: bool = False,
                   yaml_dir: Optional[str] = None, progress: bool = True, log: Callable = print) -> dict:
    """Convert one domain into ``out/name/``; returns the statistics also written to ``name.stats.json``."""
    name = name or domain.lower()
    kind, inter_path = find_inter_file(raw, domain, inter_kind)
    meta_path = os.path.join(raw, f"meta_{domain}.json.gz")
    if not os.path.isfile(meta_path):
        raise SourceFormatError(f"{meta_path}: metadata file is missing")
    log(f"{domain}: interactions from {inter_path} ({kind})")

    rows = read_interactions(inter_path, kind, progress, log)
    n_raw = len(rows)
    rows = drop_duplicates(rows)
    n_dedup = len(rows)
    meta = read_meta(meta_path, {r[1] for r in rows}, max_text_chars, progress, log)
    rows = [r for r in rows if r[1] in meta]
    n_with_meta = len(rows)
    rows, rounds = k_core(rows, min_inter)
    if not rows:
        raise SourceFormatError(f"{domain}: nothing is left after the {min_inter}-core filtering")
    sequences = user_sequences(rows)
    items = sorted({r[1] for r in rows})

    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    inter_out = os.path.join(folder, name + ".inter")
    item_out = os.path.join(folder, name + ".item")
    stats_out = os.path.join(folder, name + ".stats.json")
    atomic_write(inter_out, lambda h: write_inter(h, sequences))
    atomic_write(item_out, lambda h: write_items(h, items, meta))

    lengths = [len(seq) for seq in sequences.values()]
    times = [r[3] for r in rows]
    shifted = [(t, s) for seq in sequences.values() for _, _, t, s in seq if s != t]
    with_image = sum(bool(meta[i][1]) for i in items)
    stats = {
        "domain": domain,
        "source": os.path.abspath(inter_path),
        "source_kind": kind,
        "meta": os.path.abspath(meta_path),
        "raw_interactions": n_raw,
        "duplicates_dropped": n_raw - n_dedup,
        "dropped_without_meta": n_dedup - n_with_meta,
        "min_inter": min_inter,
        "k_core_rounds": rounds,
        "users": len(sequences),
        "items": len(items),
        "interactions": len(rows),
        "avg_seq_len": round(float(np.mean(lengths)), 4),
        "min_seq_len": int(min(lengths)),
        "max_seq_len": int(max(lengths)),
        "items_with_image": with_image,
        "image_coverage": round(with_image / len(items), 4),
        "items_without_text": sum(not meta[i][0] for i in items),
        "max_text_chars": max_text_chars,
        "first_day": _date(min(times)),
        "last_day": _date(max(times)),
        "tie_step_seconds": TIE_STEP,
        "interactions_shifted_to_break_ties": len(shifted),
        "shifted_off_their_day": sum(s // DAY != t // DAY for t, s in shifted),
        "timestamp": (f"unix seconds of the source; within a user, sorted by time with ties in file order, each "
                      f"timestamp is raised to at least the previous one + {TIE_STEP} s (strictly increasing in "
                      f"float32)"),
    }
    write_json(stats_out, stats)
    paths = [inter_out, item_out, stats_out]
    if write_yaml:
        yaml_out = os.path.join(yaml_dir or os.path.join(REPO, "properties", "dataset"), name + ".yaml")
        atomic_write(yaml_out, lambda h: h.write(yaml_text(name, domain, stats)))
        paths.append(yaml_out)
    for path in paths:
        log(f"wrote {path}")
    log(table_line(name, stats))
    return stats


def convert(raw: str, domains: list, out: str, names: Optional[list] = None, **kwargs) -> dict:
    """Convert several domains; returns {name: stats}."""
    names = names or [d.lower() for d in domains]
    if len(names) != len(domains) or len(set(names)) != len(names):
        raise SourceFormatError(f"--names {names} must give one distinct name per domain {domains}")
    results = {name: convert_domain(raw, domain, out, name, **kwargs) for domain, name in zip(domains, names)}
    log = kwargs.get("log", print)
    if len(results) > 1:
        log("Table I:")
        for name, stats in results.items():
            log("  " + table_line(name, stats))
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", required=True,
                        help="folder with <D>.csv / <D>.json.gz / <D>_5.json.gz and meta_<D>.json.gz")
    parser.add_argument("--domains", nargs="+", required=True, help="domain file names, e.g. Industrial_and_Scientific")
    parser.add_argument("--names", nargs="+", help="dataset names, one per domain (default: lower-cased domains)")
    parser.add_argument("--out", default="atomic_data", help="output root: OUT/NAME/NAME.* (default: atomic_data)")
    parser.add_argument("--min-inter", type=int, default=5, help="k of the iterative k-core on users and items (5)")
    parser.add_argument("--max-text-chars", type=int, default=512, help="item text length cap in characters (512)")
    parser.add_argument("--inter-file", choices=["auto", "csv", "full", "5core"], default="auto",
                        help="which interaction file to read (default: the first found of csv, full, 5core)")
    parser.add_argument("--write-yaml", action="store_true", help="also write properties/dataset/NAME.yaml")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        convert(args.raw, args.domains, args.out, args.names, min_inter=args.min_inter,
                max_text_chars=args.max_text_chars, inter_kind=args.inter_file, write_yaml=args.write_yaml,
                progress=not args.no_progress)
    except SourceFormatError as err:
        sys.exit(f"amazon2018: {err}")


if __name__ == "__main__":
    main()
