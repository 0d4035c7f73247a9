"""Image intake: a job's `image` string (URL, base64 or data URI) to an RGB picture of the output size.

Knows nothing of the model. Every problem is an InputError that names the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InputError
from ..framing import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, cover
from .download import download
from .netguard import UrlPolicy

FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF"}
ALLOWED_FORMATS = ", ".join(FORMATS.values())
DEFAULT_POLICY = UrlPolicy()  # public addresses only; 5 s connect, 20 s read, 60 s total, 3 redirects

_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+(=[\w.+-]+)?)*),(?P<data>.*)$", re.DOTALL
)


def load_image(field: str, value: str, policy: UrlPolicy = DEFAULT_POLICY) -> Image.Image:
    """Read, decode and normalise one image: RGB, EXIF orientation applied, alpha on white."""
    return decode_image(field, read_source(field, value, policy))


def read_source(field: str, value: str, policy: UrlPolicy = DEFAULT_POLICY) -> bytes:
    """The image bytes behind a job's image string."""
    text = value.strip()
    scheme = text.split(":", 1)[0].lower() if ":" in text[:12] else ""
    if scheme in ("http", "https"):
        return fetch_url(field, text, policy)
    if scheme == "data":
        return _decode_data_uri(field, text)
    if scheme:
        raise InputError(f"{field}: URL scheme '{scheme}' is not allowed; allowed: http, https, data, or raw base64")
    return _decode_base64(field, text)


def fetch_url(field: str, url: str, policy: UrlPolicy = DEFAULT_POLICY) -> bytes:
    """Download through the address guard: timeouts, at most `max_redirects` redirects, a byte cap."""
    body = bytearray()
    download(field, url, policy, MAX_IMAGE_BYTES, _size_limit(), body.extend)
    return bytes(body)


def _size_limit() -> str:
    return f"images may be at most {MAX_IMAGE_BYTES // (1024 * 1024)} MB"


def _decode_data_uri(field: str, text: str) -> bytes:
    match = _DATA_URI.match(text)
    if not match or not (match["mime"] or "").startswith("image/") or ";base64" not in match["params"]:
        raise InputError(f"{field}: a data URI must look like data:image/png;base64,<data>")
    return _decode_base64(field, match["data"])


def _decode_base64(field: str, text: str) -> bytes:
    compact = "".join(text.split())
    if len(compact) * 3 // 4 > MAX_IMAGE_BYTES + 3:
        raise InputError(f"{field}: the base64 image is larger than allowed; {_size_limit()}")
    try:
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(
            f"{field}: not an http(s) URL, a data URI or valid base64; allowed: http(s) URL, "
            "raw base64, or data:image/...;base64,"
        ) from None
    if not data:
        raise InputError(f"{field}: the base64 data is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(f"{field}: the image is {len(data)} bytes; {_size_limit()}")
    return data


def decode_image(field: str, data: bytes) -> Image.Image:
    """Identify the format by decoding (never by name or header), check the pixel count first."""
    try:
        image = _open_header(data)
    except (UnidentifiedImageError, OSError, ValueError):
        raise InputError(f"{field}: not a readable image; allowed formats: {ALLOWED_FORMATS}") from None
    if image.format not in FORMATS:
        raise InputError(f"{field}: {image.format} images are not supported; allowed formats: {ALLOWED_FORMATS}")
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"{field}: {width}x{height} is {width * height / 1e6:.1f} megapixels; "
            f"at most {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels are allowed"
        )
    try:
        image.seek(0)  # animated GIF/WebP/PNG: the first frame
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{field}: the {FORMATS[image.format]} data is truncated or corrupt ({exc})") from None
    return _to_rgb(image)


def _open_header(data: bytes) -> Image.Image:
    """Open the image, reading its header only, with Pillow's own bomb guard lifted for that moment.

    Pillow refuses images over about 179 megapixels inside `Image.open`, before it tells the size;
    ours (40 megapixels) is checked from the header right after and before any pixel is decoded, so
    every oversized image gets the same message with its real size.
    """
    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(io.BytesIO(data))
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 255:
            values = values / 257.0  # 16-bit samples to 8-bit
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), mode="L")
    has_alpha = "A" in image.mode or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to cover `size`, then centre-crop to it exactly (framing.cover: the playground previews it)."""
    width, height = size
    resized_size, (left, top) = cover(image.width, image.height, size)
    resized = image.resize(resized_size, Image.Resampling.LANCZOS) if resized_size != image.size else image
    return resized.crop((left, top, left + width, top + height))
