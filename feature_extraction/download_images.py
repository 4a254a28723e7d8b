"""Download the item images of a dataset folder, verified, resumable, in parallel.

Reads ``FOLDER/NAME.item`` (``item_id:token`` and ``image_url:token`` columns; one URL per item,
an empty field = the item has no image URL) and writes:

``FOLDER/images/<item token>.<ext>``
    one image per item that could be fetched. ``ext`` comes from the image's real format as
    Pillow reads it (``jpg``, ``png``, ``gif``, ``webp``, ...), never from the URL.
``FOLDER/images/manifest.jsonl``
    one JSON object per item of ``NAME.item``: ``item``, ``url``, ``status``, ``attempts``
    (requests made for it by the run that wrote the record), ``bytes``, ``file``, ``format``,
    ``content_type``, ``error``, ``time`` (UTC). ``status`` is one of ``ok``, ``http_<code>``
    (e.g. ``http_404``), ``timeout``, ``not_image`` (the bytes are no image, e.g. an HTML page
    served with status 200), ``truncated`` (cut short: fewer bytes than Content-Length, or an
    image that does not fully decode), ``corrupt`` (an image that fails to decode otherwise),
    ``too_large``, ``network_error``, ``bad_url`` (not http/https) or ``no_url``.
``FOLDER/NAME.images.json``
    the summary: items, items with an image, ``coverage`` (items with an image / all items),
    counts per status, and what this run did.

Every response is checked with Pillow before it is kept: ``Image.verify()`` and then a full
``load()`` (Pillow's ``LOAD_TRUNCATED_IMAGES`` is forced off, so a truncated JPEG is rejected).
The Content-Type header is recorded, but the bytes decide: an image is kept whatever its header
says, anything else is ``not_image``. Images are written to a temporary file in ``images/``,
fsynced and renamed into place (``os.replace``): an interrupted run never leaves a half image
under an item's name; leftover temporary files (``.*.part``) are removed by the next run.

Resuming. A run fetches only the items without a valid image: an item whose manifest record says
``ok`` for the same URL and whose file is still there with the recorded size is not requested
again (``--verify-existing`` also re-decodes those files). An image file without a record (e.g.
a run killed between writing the file and the record) is verified with Pillow and kept. Every
other item, failures included, is requested again. Run one download per folder at a time.

Retries. Within a run, timeouts, network errors, HTTP 408/429/5xx and truncated responses are
retried up to ``--retries`` times, after ``--backoff * 2**k`` seconds (plus up to 50% jitter);
other failures (404, not an image, ...) are recorded at once. ``--timeout`` bounds each request,
from connecting to the last byte (each socket operation too, so a stalled server is cut off
after ``--timeout`` seconds; one trickling bytes, at the next chunk after the limit).

Fetching and checking one image lives in ``image_fetch.py`` beside this script. Only the standard
library's urllib (proxies from the usual ``*_proxy`` environment variables) and Pillow are used.

Usage::

    python feature_extraction/download_images.py atomic_data/mydata
    python feature_extraction/download_images.py atomic_data/mydata --workers 16 --retries 3 --timeout 20
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from typing import Callable, Optional

from PIL import ImageFile
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # image_fetch.py beside this script
from image_fetch import Fetched, extension, fetch, inspect_image  # noqa: E402

URL_COLUMN = "image_url"
IMAGES_DIR = "images"
MANIFEST = "manifest.jsonl"
SUMMARY_SUFFIX = ".images.json"
PART_SUFFIX = ".part"
DEFAULT_WORKERS = 8
DEFAULT_RETRIES = 2
DEFAULT_TIMEOUT = 30.0
DEFAULT_BACKOFF = 1.0
SAFE_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class DownloadError(ValueError):
    """The dataset folder is missing or unusable."""


# ----------------------------------------------------------------------------- the dataset's URLs


def _column(path: str, header: list, name: str, hint: str = "") -> int:
    for position, field in enumerate(header):
        if field.split(":")[0] == name:
            return position
    raise DownloadError(f"{path}: header {header} has no '{name}' column{hint}")


def read_item_urls(path: str) -> tuple:
    """Item tokens and image URLs ('' = none) of a RecBole ``.item`` file, in file order."""
    if not os.path.isfile(path):
        raise DownloadError(f"{path} is missing: the dataset folder needs NAME.item with item_id and "
                            f"{URL_COLUMN} columns")
    tokens, urls = [], []
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        item_col = _column(path, header, "item_id")
        url_col = _column(path, header, URL_COLUMN,
                          f"; add an '{URL_COLUMN}:token' column (one URL per item, empty = no image) to "
                          "download the item images")
        for line_no, line in enumerate(handle, 2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                raise DownloadError(f"{path}:{line_no}: expected {len(header)} tab-separated columns, got {len(parts)}")
            tokens.append(parts[item_col])
            urls.append(parts[url_col].strip())
    duplicated = sorted(token for token, count in Counter(tokens).items() if count > 1)
    if duplicated:
        raise DownloadError(f"{path}: item(s) listed twice: {duplicated[:10]}")
    unsafe = [token for token in tokens if not SAFE_TOKEN.fullmatch(token)]
    if unsafe:
        raise DownloadError(f"{path}: {len(unsafe)} item token(s) cannot be used as file names (letters, digits, "
                            f"'.', '_', '-' only, at most 200 characters): {unsafe[:10]}")
    return tokens, urls


# ----------------------------------------------------------------------------- files


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then ``os.replace`` it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=PART_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def remove_leftovers(images: str) -> int:
    """Delete temporary files left by an interrupted run; returns how many."""
    removed = 0
    for entry in os.listdir(images):
        if entry.startswith(".") and entry.endswith(PART_SUFFIX):
            os.remove(os.path.join(images, entry))
            removed += 1
    return removed


def image_files(images: str) -> dict:
    """{item token: [file names]} of the image files in ``images`` (not the manifest, not temp files)."""
    found = {}
    for entry in os.listdir(images):
        if entry.startswith(".") or entry == MANIFEST or not os.path.isfile(os.path.join(images, entry)):
            continue
        token, dot, _ = entry.rpartition(".")
        if dot:
            found.setdefault(token, []).append(entry)
    return found


def read_manifest(path: str) -> dict:
    """{item token: its last record}; lines cut short by an interrupted run are skipped."""
    records = {}
    if not os.path.isfile(path):
        return records
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "item" in record:
                records[record["item"]] = record
    return records


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(token: str, url: str, result: Fetched, file: str = "", size: int = 0) -> dict:
    return {"item": token, "url": url, "status": result.status, "attempts": result.attempts, "bytes": size,
            "file": file, "format": result.image_format, "content_type": result.content_type,
            "error": result.error, "time": _now()}


def _file_ok(images: str, name: str, size: Optional[int], verify: bool) -> bool:
    path = os.path.join(images, name)
    if not os.path.isfile(path) or (size is not None and os.path.getsize(path) != size):
        return False
    if not verify:
        return True
    with open(path, "rb") as handle:
        return inspect_image(handle.read())[0] == "ok"


def _download_item(token: str, url: str, images: str, stale: list, args: dict, opener) -> dict:
    """Fetch one item and put its image in place; returns its manifest record."""
    result = fetch(url, args["timeout"], args["retries"], args["backoff"], opener)
    if result.status != "ok":
        return _record(token, url, result)
    name = f"{token}.{extension(result.image_format)}"
    atomic_write(os.path.join(images, name), result.data)
    for old in stale:  # an earlier image of the item in another format
        if old != name and os.path.isfile(os.path.join(images, old)):
            os.remove(os.path.join(images, old))
    return _record(token, url, result, name, len(result.data))


# ----------------------------------------------------------------------------- the run


def download_dataset(
    folder: str,
    name: Optional[str] = None,
    workers: int = DEFAULT_WORKERS,
    retries: int = DEFAULT_RETRIES,
    timeout: float = DEFAULT_TIMEOUT,
    backoff: float = DEFAULT_BACKOFF,
    verify_existing: bool = False,
    progress: bool = True,
    log: Callable = print,
) -> dict:
    """Download the images of ``folder/name.item`` into ``folder/images``; returns the summary."""
    if workers < 1 or retries < 0 or timeout <= 0 or backoff < 0:
        raise DownloadError("--workers must be >= 1, --retries >= 0, --timeout > 0 and --backoff >= 0")
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated image must fail load(), never be padded
    folder = os.fspath(folder)
    name = name or os.path.basename(os.path.normpath(folder))
    tokens, urls = read_item_urls(os.path.join(folder, name + ".item"))
    images = os.path.join(folder, IMAGES_DIR)
    os.makedirs(images, exist_ok=True)
    if remove_leftovers(images):
        log(f"removed temporary files of an interrupted run from {images}")
    manifest_path = os.path.join(images, MANIFEST)
    previous = read_manifest(manifest_path)
    on_disk = image_files(images)

    records, todo = {}, []
    kept = adopted = 0
    for token, url in zip(tokens, urls):
        old = previous.get(token)
        if not url:
            records[token] = _record(token, url, Fetched("no_url", 0, error=f"empty {URL_COLUMN}"))
        elif (old and old.get("status") == "ok" and old.get("url") == url and old.get("file")
              and _file_ok(images, old["file"], old.get("bytes"), verify_existing)):
            records[token] = old
            kept += 1
        else:
            # A valid file without a matching record (a run killed before writing the record): keep it,
            # unless the item's URL changed since.
            found = [] if old is not None and old.get("url") != url else on_disk.get(token, [])
            valid = next((f for f in found if _file_ok(images, f, None, verify=True)), None)
            if valid is not None:
                with open(os.path.join(images, valid), "rb") as handle:
                    data = handle.read()
                result = Fetched("ok", 0, image_format=inspect_image(data)[1], error="kept from an earlier run")
                records[token] = _record(token, url, result, valid, len(data))
                adopted += 1
            else:
                todo.append((token, url))
    log(f"{len(tokens)} items: {kept + adopted} images already here, {len(todo)} to fetch, "
        f"{len(tokens) - kept - adopted - len(todo)} without {URL_COLUMN}")

    opener = urllib.request.build_opener()
    settings = {"timeout": timeout, "retries": retries, "backoff": backoff}
    lock = threading.Lock()
    start = time.monotonic()
    fetched = Counter()
    try:
        with open(manifest_path, "a", encoding="utf-8") as journal, \
                tqdm(total=len(todo), desc="downloading images", unit="img", disable=not progress) as bar, \
                ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_download_item, token, url, images, on_disk.get(token, []), settings, opener):
                       token for token, url in todo}
            try:
                for future in as_completed(futures):
                    token = futures[future]
                    try:
                        record = future.result()
                    except Exception as err:  # noqa: BLE001 - e.g. the disk is full: record it, go on
                        url = urls[tokens.index(token)]
                        record = _record(token, url, Fetched("error", 0, error=f"{type(err).__name__}: {err}"))
                    with lock:
                        records[token] = record
                        journal.write(json.dumps(record) + "\n")
                        journal.flush()
                    fetched[record["status"]] += 1
                    bar.update(1)
                    bar.set_postfix(ok=fetched["ok"], failed=sum(fetched.values()) - fetched["ok"], refresh=False)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # requests in flight end within --timeout
                raise
    finally:
        # One record per item of NAME.item, in its order (the journal above only appends).
        ordered = [records[token] for token in tokens if token in records]
        atomic_write_text(manifest_path, "".join(json.dumps(record) + "\n" for record in ordered))
        statuses = Counter(record["status"] for record in ordered)
        done = len(ordered) == len(tokens)
        summary = {
            "items": len(tokens),
            "with_image": statuses["ok"],
            "coverage": statuses["ok"] / len(tokens) if tokens else 0.0,
            "status": dict(sorted(statuses.items())),
            "complete": done,  # False: the run was interrupted, some items have no record yet
            "images": IMAGES_DIR,
            "manifest": f"{IMAGES_DIR}/{MANIFEST}",
            "last_run": {"time": _now(), "requested": len(todo), "kept": kept + adopted,
                         "fetched": dict(sorted(fetched.items())), "seconds": round(time.monotonic() - start, 2),
                         "workers": workers, "retries": retries, "timeout": timeout},
            "source": "feature_extraction/download_images.py",
        }
        atomic_write_text(os.path.join(folder, name + SUMMARY_SUFFIX), json.dumps(summary, indent=2) + "\n")
    failures = ", ".join(f"{status} {count}" for status, count in sorted(statuses.items()) if status != "ok")
    log(f"coverage: {statuses['ok']} of {len(tokens)} items have an image ({100 * summary['coverage']:.1f}%)"
        + (f"; without: {failures}" if failures else "") + f"; details in {manifest_path}")
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="dataset folder holding NAME.item with an image_url column")
    parser.add_argument("--name", help="dataset name (default: the folder's name)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"parallel downloads (default {DEFAULT_WORKERS})")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                        help=f"extra attempts after a transient failure (default {DEFAULT_RETRIES})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds per request (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--backoff", type=float, default=DEFAULT_BACKOFF,
                        help=f"seconds before the first retry, doubled for each next one (default {DEFAULT_BACKOFF:g})")
    parser.add_argument("--verify-existing", action="store_true",
                        help="re-decode the images kept from earlier runs (default: trust the recorded size)")
    args = parser.parse_args(argv)
    try:
        download_dataset(args.folder, args.name, args.workers, args.retries, args.timeout, args.backoff,
                         args.verify_existing)
    except DownloadError as err:
        sys.exit(f"download_images: {err}")


if __name__ == "__main__":
    main()
