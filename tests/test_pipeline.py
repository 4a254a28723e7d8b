"""From raw Amazon Reviews 2018 files to a trained-ready dataset, every step as a user runs it:
amazon2018.py -> download_images.py (a real HTTP server on 127.0.0.1) -> encode_clip.py (tiny random
CLIP) -> python -m recbole_mmm4rec.check -> MMM4Rec scores every item."""

import gzip
import io
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from recbole.data import create_dataset, data_preparation

pytest.importorskip("open_clip")
from PIL import Image  # noqa: E402

import recbole_mmm4rec  # noqa: E402
from conftest import TINY, build_model, load_script, tiny_clip_checkpoint  # noqa: E402

USERS, ITEMS = ["U1", "U2", "U3", "U4"], ["A1", "A2", "A3", "A4"]
DAY = 86400


def _jpeg(seed):
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), (60 * seed, 90, 150)).save(buffer, "JPEG")
    return buffer.getvalue()


class _Images(BaseHTTPRequestHandler):
    files = {f"/{item}.jpg": _jpeg(i) for i, item in enumerate(ITEMS[:3])}  # A4's URL is a 404

    def do_GET(self):  # noqa: N802
        body = self.files.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "image/jpeg" if body else "text/html")
        self.end_headers()
        self.wfile.write(body or b"<html>not found</html>")

    def log_message(self, *args):
        pass


@pytest.fixture
def image_server(monkeypatch):
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _raw_domain(folder, base):
    """Every user rates every item on days 1..4 (one duplicate line), in the real 2018 json formats."""
    reviews = [{"reviewerID": u, "asin": i, "overall": 5.0, "unixReviewTime": 1_400_000_000 + (k + j) * DAY}
               for k, u in enumerate(USERS) for j, i in enumerate(ITEMS)]
    meta = [{"asin": i, "title": f"Lab &amp; bench tool <b>{i}</b>", "category": ["Industrial", "Lab"],
             "brand": "Acme", "imageURLHighRes": [f"{base}/{i}.jpg"]} for i in ITEMS]
    for name, records in (("Tiny_5.json.gz", reviews + reviews[:1]), ("meta_Tiny.json.gz", meta)):
        with gzip.open(folder / name, "wt") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))


def test_raw_files_to_checked_dataset_to_scores(tmp_path, image_server):
    raw, out = tmp_path / "raw", tmp_path / "atomic"
    raw.mkdir()
    _raw_domain(raw, image_server)

    stats = load_script("amazon2018").convert_domain(str(raw), "Tiny", str(out), name="tiny", min_inter=3,
                                                      progress=False, log=lambda m: None)
    assert (stats["users"], stats["items"], stats["interactions"]) == (4, 4, 16)
    folder = out / "tiny"

    summary = load_script("download_images").download_dataset(str(folder), retries=0, timeout=5,
                                                               progress=False, log=lambda m: None)
    assert summary["with_image"] == 3 and abs(summary["coverage"] - 0.75) < 1e-9

    checkpoint = tiny_clip_checkpoint(tmp_path)
    load_script("encode_clip").encode(folder, "tiny-test-clip", checkpoint, batch_size=2, device="cpu",
                                      log=lambda m: None)

    done = subprocess.run([sys.executable, "-m", "recbole_mmm4rec.check", str(folder),
                           "--feature-dims", "text=16,image=16"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "coverage" in done.stdout

    config = recbole_mmm4rec.build_config("MMM4Rec", "tiny", config_dict={
        **TINY, "data_path": str(out), "feature_dims": {"text": 16, "image": 16}, "MAX_ITEM_LIST_LENGTH": 4})
    dataset = create_dataset(config)
    assert dataset.item_features["image"][1][1:].sum() == 3  # A4 has no image: marked missing
    _, _, test = data_preparation(config, dataset)
    model = build_model(config, dataset)
    with torch.no_grad():
        scores = model.full_sort_predict(next(iter(test))[0])
    assert scores.shape == (4, 5) and torch.isfinite(scores).all()
