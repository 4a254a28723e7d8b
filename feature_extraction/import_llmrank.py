"""Convert an LLMRank-layout folder (RUCAIBox/LLMRank ``dataset/<P>/``, e.g. ``Games-6k``) into RecBole atomic files.

Input folder (``<P>`` = file prefix, e.g. ``Games-6k``):

- ``<P>.test.inter``: one row per user, ``user_id:token  item_id_list:token_seq  item_id:token`` with
  integer tokens: the user's whole (capped) sequence, history + last item.
- ``<P>.valid.inter``: the same users, the history before the last item + the second-to-last item;
  checked to be exactly the test row without its last item.
- ``<P>.item``: ``item_id:token<TAB>title:token_seq``, every item of the ``.inter`` files with a title.

(The source's ``train.inter``, every earlier prefix of the same sequences, is not needed.)

Output folder ``OUT/NAME/``: ``NAME.inter`` (user, item, timestamp), ``NAME.item`` (item, text = the
title) and ``NAME.stats.json``. The source has no timestamps: each interaction gets its position in
the user's sequence (1, 2, 3, ...), so RecBole's leave-one-out split ordered by time reproduces the
source's split. Text features: ``python feature_extraction/encode_text.py OUT/NAME`` (or let the
dataset build them when it is first loaded: ``build_text_features: True`` in its yaml).

Usage::

    python feature_extraction/import_llmrank.py ../shared/data/amazon2018_games --name games --out atomic_data
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # atomic_files.py, import_unisrec.py: beside this script
from atomic_files import SourceFormatError, infer_prefix, require, write_json  # noqa: E402
from import_unisrec import _header, read_inter, write_inter, write_items  # noqa: E402

ITEM_HEADER = ["item_id:token", "title:token_seq"]


def read_titles(path: str) -> dict:
    """{item int: title}, whitespace runs collapsed; every title non-empty, every item once."""
    titles = {}
    with open(require(path), encoding="utf-8") as handle:
        _header(path, handle, ITEM_HEADER)
        for line_no, line in enumerate(handle, 2):
            token, _, title = line.rstrip("\n").partition("\t")
            title = " ".join(title.split())
            if not token.isdigit() or not title:
                raise SourceFormatError(f"{path}:{line_no}: expected 'integer item<TAB>title', got {line.rstrip()!r}")
            if int(token) in titles:
                raise SourceFormatError(f"{path}:{line_no}: item {token} appears twice")
            titles[int(token)] = title
    return titles


def rebuild_sequences(test_rows: list, valid_rows: list) -> dict:
    """{user int: sequence}: each test row's history + target, checked against the user's valid row."""
    valid = {}
    for row in valid_rows:
        if row.user in valid:
            raise SourceFormatError(f"{row.where}: a second valid row of user {row.user}")
        valid[row.user] = row
    sequences = {}
    for row in test_rows:
        if row.user in sequences:
            raise SourceFormatError(f"{row.where}: a second test row of user {row.user}")
        other = valid.pop(row.user, None)
        if other is None:
            raise SourceFormatError(f"{row.where}: user {row.user} has no valid row")
        if (other.history, other.target) != (row.history[:-1], row.history[-1]):
            raise SourceFormatError(f"{other.where}: the valid row of user {row.user} is not the test row "
                                    f"({row.where}) without its last item")
        sequences[row.user] = list(row.history) + [row.target]
    if valid:
        extra = next(iter(valid.values()))
        raise SourceFormatError(f"{extra.where}: user {extra.user} has a valid row but no test row")
    return sequences


def convert(src_dir: str, name: str, out_dir: str, prefix: str | None = None, log=print) -> dict:
    """Write ``out_dir/name/{name}.inter, .item, .stats.json``; returns the stats."""
    prefix = prefix or infer_prefix(src_dir, ".test.inter")
    source = os.path.join(src_dir, prefix)
    sequences = rebuild_sequences(read_inter(source + ".test.inter", "test"), read_inter(source + ".valid.inter", "valid"))
    titles = read_titles(source + ".item")
    used = {item for seq in sequences.values() for item in seq}
    unknown = sorted(used - set(titles))
    if unknown:
        raise SourceFormatError(f"{source}.item: item {unknown[0]} of the .inter files has no title "
                                f"({len(unknown)} items in all)")
    items = sorted(used)  # items without an interaction are left out (RecBole would never rank them anyway)
    folder = os.path.join(out_dir, name)
    os.makedirs(folder, exist_ok=True)
    users = sorted(sequences)
    rows = write_inter(os.path.join(folder, f"{name}.inter"), sequences, [str(u) for u in range(max(users) + 1)],
                       [str(i) for i in range(max(items) + 1)])
    write_items(os.path.join(folder, f"{name}.item"), [str(i) for i in items], {str(i): titles[i] for i in items})
    lengths = [len(seq) for seq in sequences.values()]
    stats = {"source": os.path.abspath(src_dir), "prefix": prefix, "users": len(users), "items": len(items),
             "items_in_source": len(titles), "interactions": rows, "avg_seq_len": round(rows / len(users), 4),
             "min_seq_len": min(lengths), "max_seq_len": max(lengths), "items_without_text": 0,
             "timestamp": "ordinal position of the interaction in the user's sequence (1, 2, ...); no real time"}
    write_json(os.path.join(folder, f"{name}.stats.json"), stats)
    log(f"{name}: {stats['users']:,} users, {stats['items']:,} items, {rows:,} interactions "
        f"(average length {stats['avg_seq_len']:.2f}) -> {folder}")
    return stats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="the source folder (e.g. ../shared/data/amazon2018_games)")
    parser.add_argument("--name", required=True, help="dataset name (folder and file names), e.g. games")
    parser.add_argument("--out", default="atomic_data", help="where the dataset folder goes (default atomic_data)")
    parser.add_argument("--prefix", help="source file prefix (default: from the single *.test.inter)")
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.name, args.out, args.prefix)
    except SourceFormatError as error:
        sys.exit(f"import_llmrank: {error}")


if __name__ == "__main__":
    main()
