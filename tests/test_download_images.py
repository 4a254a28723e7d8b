"""Tests of feature_extraction/download_images.py against a local HTTP server (127.0.0.1 only)."""

import importlib.util
import io
import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 0.5  # the slow URL answers after SLOW seconds, well past it
SLOW = 5.0


def load_downloader():
    """The downloader is a script, not a package module: load it from its path."""
    spec = importlib.util.spec_from_file_location("download_images", REPO / "feature_extraction" / "download_images.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


downloader = load_downloader()


def image_bytes(fmt, size=(48, 32), seed=0):
    """A noisy RGB image (noise keeps a JPEG body large enough to cut)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


JPEG = image_bytes("JPEG", seed=1)
PNG = image_bytes("PNG", seed=2)
JPEG2 = image_bytes("JPEG", size=(20, 20), seed=3)
FULL = image_bytes("JPEG", size=(64, 64), seed=4)
TRUNCATED = FULL[: len(FULL) * 6 // 10]  # valid header, body cut; sent with a matching Content-Length
HTML = b"<!doctype html><html><body>Sorry, this image is not available.</body></html>"


class Server:
    """A ThreadingHTTPServer on an ephemeral 127.0.0.1 port that counts requests per path."""

    def __init__(self):
        self.requests = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends the slow handler's wait at teardown
        self.fixed = False  # second-run mode: the truncated and flaky URLs serve whole images
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, code, body, ctype):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the client gave up (timeout)
                    pass

            def do_GET(self):
                with server.lock:
                    server.requests[self.path] += 1
                    count = server.requests[self.path]
                if self.path == "/a.jpg":
                    self.send(200, JPEG, "image/jpeg")
                elif self.path == "/b.jpg":  # a PNG behind a .jpg URL and a wrong header
                    self.send(200, PNG, "image/jpeg")
                elif self.path == "/c":  # an image with a useless Content-Type is still an image
                    self.send(200, JPEG2, "application/octet-stream")
                elif self.path == "/flaky.png":  # 503 on the first request of the first run
                    if count == 1 and not server.fixed:
                        self.send(503, b"busy", "text/plain")
                    else:
                        self.send(200, PNG, "image/png")
                elif self.path == "/slow.jpg":
                    server.release.wait(SLOW)
                    self.send(200, JPEG, "image/jpeg")
                elif self.path == "/cut.jpg":
                    self.send(200, FULL if server.fixed else TRUNCATED, "image/jpeg")
                elif self.path == "/page.jpg":
                    self.send(200, HTML, "text/html; charset=utf-8")
                else:
                    self.send(404, b"not found", "text/plain")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 must be reached directly
    with Server() as running:
        yield running


def make_dataset(folder, base, urls):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["item_id:token\ttitle:token_seq\timage_url:token"]
    lines += [f"{token}\tsome title\t{base + path if path.startswith('/') else path}" for token, path in urls.items()]
    (folder / f"{folder.name}.item").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


ITEMS = {
    "A1": "/a.jpg",
    "B2": "/b.jpg",
    "C3": "/c",
    "F4": "/flaky.png",
    "M5": "/missing.jpg",
    "S6": "/slow.jpg",
    "T7": "/cut.jpg",
    "H8": "/page.jpg",
    "N9": "",
}


def manifest(folder):
    lines = (folder / "images" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return {record["item"]: record for record in map(json.loads, lines)}


def run(folder, **kwargs):
    return downloader.download_dataset(folder, workers=4, retries=1, timeout=TIMEOUT, backoff=0.01,
                                       progress=False, log=lambda *a: None, **kwargs)


def test_download_verify_and_resume(tmp_path, server):
    folder = make_dataset(tmp_path / "toy", server.base, ITEMS)
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # a caller's setting must not let a truncated JPEG through
    start = time.monotonic()
    summary = run(folder)
    first_run = time.monotonic() - start
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False

    images = folder / "images"
    # Good images: saved under the item token with the extension of their real format, readable.
    assert sorted(p.name for p in images.iterdir()) == ["A1.jpg", "B2.png", "C3.jpg", "F4.png", "manifest.jsonl"]
    for name, content in [("A1.jpg", JPEG), ("B2.png", PNG), ("C3.jpg", JPEG2), ("F4.png", PNG)]:
        assert (images / name).read_bytes() == content
        with Image.open(images / name) as image:
            image.load()
    assert Image.open(images / "B2.png").format == "PNG"

    records = manifest(folder)
    assert list(records) == list(ITEMS)  # one record per item, in the .item order
    status = {token: record["status"] for token, record in records.items()}
    assert status == {"A1": "ok", "B2": "ok", "C3": "ok", "F4": "ok", "M5": "http_404", "S6": "timeout",
                      "T7": "truncated", "H8": "not_image", "N9": "no_url"}
    assert records["A1"]["bytes"] == len(JPEG) and records["A1"]["file"] == "A1.jpg"
    assert records["A1"]["format"] == "JPEG" and records["B2"]["format"] == "PNG"
    assert records["F4"]["attempts"] == 2  # the 503 was retried
    assert records["M5"]["attempts"] == 1  # a 404 is not retried within a run
    assert records["S6"]["attempts"] == 2  # timeouts are retried, boundedly
    assert records["T7"]["attempts"] == 2 and "truncated" in records["T7"]["error"]
    assert records["H8"]["attempts"] == 1 and "text/html" in records["H8"]["error"]
    assert records["N9"]["attempts"] == 0
    assert server.requests["/slow.jpg"] == 2 and server.requests["/missing.jpg"] == 1
    assert first_run < 2 * TIMEOUT + 2.5, first_run  # two timed-out attempts, the rest in parallel

    on_disk = json.loads((folder / "toy.images.json").read_text(encoding="utf-8"))
    assert on_disk == summary
    assert summary["items"] == 9 and summary["with_image"] == 4
    assert summary["coverage"] == pytest.approx(4 / 9)
    assert summary["complete"] is True
    assert summary["status"] == {"http_404": 1, "no_url": 1, "not_image": 1, "ok": 4, "timeout": 1, "truncated": 1}

    # Second run: the good images are not requested again, every failure is.
    before = Counter(server.requests)
    server.fixed = True
    summary = run(folder)
    new = server.requests - before
    assert new == Counter({"/missing.jpg": 1, "/slow.jpg": 2, "/cut.jpg": 1, "/page.jpg": 1})
    status = {token: record["status"] for token, record in manifest(folder).items()}
    assert status["T7"] == "ok" and status["S6"] == "timeout" and status["M5"] == "http_404"
    assert (images / "T7.jpg").read_bytes() == FULL
    assert summary["with_image"] == 5 and summary["coverage"] == pytest.approx(5 / 9)
    assert summary["last_run"]["requested"] == 4 and summary["last_run"]["kept"] == 4
    assert not [p for p in images.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_resume_after_interruption(tmp_path, server, monkeypatch):
    folder = make_dataset(tmp_path / "toy", server.base, {"A1": "/a.jpg", "B2": "/b.jpg"})
    images = folder / "images"
    images.mkdir()
    (images / ".A1.jpg.x1y2.part").write_bytes(JPEG[:100])  # left by a killed run
    (images / "B2.png").write_bytes(PNG)  # written by a run killed before it wrote the record

    # A crash while writing an image leaves nothing under the final name, and no temp file.
    def crash(fd):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(downloader.os, "fsync", crash)
        with pytest.raises(KeyboardInterrupt):
            downloader.atomic_write(str(images / "Z9.jpg"), JPEG)
    assert sorted(p.name for p in images.iterdir()) == [".A1.jpg.x1y2.part", "B2.png"]

    summary = run(folder)
    assert sorted(p.name for p in images.iterdir()) == ["A1.jpg", "B2.png", "manifest.jsonl"]
    assert server.requests == Counter({"/a.jpg": 1})  # the valid B2.png was kept, not fetched
    records = manifest(folder)
    assert records["B2"]["status"] == "ok" and records["B2"]["attempts"] == 0 and records["B2"]["bytes"] == len(PNG)
    assert summary["coverage"] == 1.0

    # A kept image whose size no longer matches its record is fetched again; one broken at the same size
    # only with --verify-existing (a normal run trusts the recorded size).
    (images / "A1.jpg").write_bytes(JPEG[: len(JPEG) // 2])
    run(folder)
    assert server.requests["/a.jpg"] == 2 and (images / "A1.jpg").read_bytes() == JPEG
    (images / "A1.jpg").write_bytes(bytes(len(JPEG)))
    run(folder)
    assert server.requests["/a.jpg"] == 2
    run(folder, verify_existing=True)
    assert server.requests["/a.jpg"] == 3 and (images / "A1.jpg").read_bytes() == JPEG


def test_interrupted_run(tmp_path, server, monkeypatch):
    """Ctrl-C during a run: what finished is recorded, the summary says incomplete, the next run completes."""
    folder = make_dataset(tmp_path / "toy", server.base, {"A1": "/a.jpg", "B2": "/b.jpg", "X3": "file:///etc/hosts"})
    real = downloader._download_item

    def interrupted(token, *args):
        if token == "B2":
            raise KeyboardInterrupt
        return real(token, *args)

    with monkeypatch.context() as patch:
        patch.setattr(downloader, "_download_item", interrupted)
        with pytest.raises(KeyboardInterrupt):
            downloader.download_dataset(folder, workers=1, progress=False, log=lambda *a: None)
    summary = json.loads((folder / "toy.images.json").read_text(encoding="utf-8"))
    assert summary["complete"] is False and summary["with_image"] == 1
    assert manifest(folder)["A1"]["status"] == "ok" and "B2" not in manifest(folder)

    summary = run(folder)
    assert summary["complete"] is True and summary["with_image"] == 2
    assert server.requests == Counter({"/a.jpg": 1, "/b.jpg": 1})
    assert manifest(folder)["X3"]["status"] == "bad_url"  # only http(s) URLs are requested


def test_missing_url_column(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.item").write_text("item_id:token\ttitle:token_seq\nA1\tx\n", encoding="utf-8")
    with pytest.raises(downloader.DownloadError, match="no 'image_url' column"):
        run(folder)
    with pytest.raises(SystemExit, match="image_url"):
        downloader.main([str(folder)])
