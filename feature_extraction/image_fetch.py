"""Fetch one image over HTTP(S) and check its bytes with Pillow (used by ``download_images.py``).

``fetch`` makes up to ``retries`` more attempts after transient failures (timeouts, network errors,
HTTP 408/429/5xx, truncated responses), each bounded by ``timeout`` seconds from connecting to the last
byte; ``inspect_image`` decides whether bytes are a whole image (``verify()`` and a full ``load()``).
Only the standard library's urllib and Pillow are used.
"""

from __future__ import annotations

import io
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

USER_AGENT = "recbole-mmm4rec-download-images/1.0 (+urllib)"
MAX_BYTES = 32 * 1024 * 1024  # a larger response is recorded as too_large
CHUNK = 64 * 1024
RETRIED = {"timeout", "network_error", "truncated", "http_408", "http_429"}  # and every http_5xx
# Pillow format -> file extension; other formats use their name in lower case.
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp",
              "TIFF": "tif", "ICO": "ico"}


@dataclass
class Fetched:
    """The outcome of fetching one item (all attempts)."""

    status: str
    attempts: int
    data: bytes = b""
    image_format: str = ""
    content_type: str = ""
    error: str = ""


# ----------------------------------------------------------------------------- checking the bytes


def inspect_image(data: bytes) -> tuple:
    """``("ok", pillow format, "")`` if ``data`` is a whole, decodable image, else ``(status, "", reason)``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format or ""
            image.verify()
    except UnidentifiedImageError:
        return "not_image", "", "Pillow cannot identify the bytes as an image"
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad data
        return _decode_failure(err)
    try:
        with Image.open(io.BytesIO(data)) as image:  # verify() leaves the image unusable: open it again
            image.load()
    except Exception as err:  # noqa: BLE001
        return _decode_failure(err)
    return "ok", image_format, ""


def _decode_failure(err: Exception) -> tuple:
    message = f"{type(err).__name__}: {err}"
    truncated = isinstance(err, EOFError) or "truncated" in str(err).lower()
    return ("truncated" if truncated else "corrupt"), "", message


def extension(image_format: str) -> str:
    return EXTENSIONS.get(image_format.upper(), image_format.lower() or "img")


# ----------------------------------------------------------------------------- fetching


def _is_timeout(err: BaseException) -> bool:
    return isinstance(err, TimeoutError) or isinstance(getattr(err, "reason", None), TimeoutError)


def fetch_once(url: str, timeout: float, opener, max_bytes: int = MAX_BYTES) -> Fetched:
    """One request: the body if the status is 2xx and the bytes are an image, else the failure."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        return Fetched("bad_url", 0, error=f"not an http(s) URL: {url!r}")
    start = time.monotonic()
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    content_type = ""
    try:
        with opener.open(request, timeout=timeout) as response:
            content_type = response.headers.get("Content-Type", "") or ""
            expected = response.headers.get("Content-Length")
            chunks, size = [], 0
            while True:
                if time.monotonic() - start > timeout:
                    return Fetched("timeout", 1, content_type=content_type,
                                   error=f"no complete response within {timeout:g} s ({size} bytes read)")
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    return Fetched("too_large", 1, content_type=content_type, error=f"more than {max_bytes} bytes")
                chunks.append(chunk)
    except urllib.error.HTTPError as err:
        err.close()
        return Fetched(f"http_{err.code}", 1, content_type=err.headers.get("Content-Type", "") if err.headers else "",
                       error=f"HTTP {err.code} {err.reason}")
    except Exception as err:  # noqa: BLE001 - URLError, socket errors, http.client errors
        status = "timeout" if _is_timeout(err) else "network_error"
        return Fetched(status, 1, content_type=content_type, error=f"{type(err).__name__}: {err}")
    data = b"".join(chunks)
    if expected is not None and expected.isdigit() and len(data) < int(expected):
        return Fetched("truncated", 1, content_type=content_type,
                       error=f"{len(data)} of {expected} bytes (Content-Length) received")
    status, image_format, reason = inspect_image(data)
    if status != "ok":
        if content_type and not content_type.lower().startswith("image/"):
            reason = f"Content-Type {content_type!r}; {reason}"
        return Fetched(status, 1, content_type=content_type, error=reason)
    return Fetched("ok", 1, data=data, image_format=image_format, content_type=content_type)


def _retried(status: str) -> bool:
    return status in RETRIED or (status.startswith("http_5"))


def fetch(url: str, timeout: float, retries: int, backoff: float, opener) -> Fetched:
    """``fetch_once`` with up to ``retries`` more attempts after transient failures."""
    attempts = 0
    while True:
        result = fetch_once(url, timeout, opener)
        attempts += result.attempts
        result.attempts = attempts
        if result.status == "ok" or not _retried(result.status) or attempts > retries:
            return result
        time.sleep(backoff * 2 ** (attempts - 1) * (1 + 0.5 * random.random()))
