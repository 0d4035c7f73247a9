import struct
import zlib

import numpy as np
import pytest
from helpers import b64, data_uri, encode, picture
from PIL import Image

from wan_i2v.errors import InputError
from wan_i2v.framing import crop_in_source, output_size
from wan_i2v.worker import images
from wan_i2v.worker.images import decode_image, fit_image, load_image


@pytest.mark.parametrize(
    "size, resolution, expected",
    [
        ((832, 480), "480p", (832, 480)),
        ((1664, 960), "480p", (832, 480)),
        ((480, 832), "480p", (480, 832)),
        ((1280, 720), "720p", (1280, 720)),
        ((720, 1280), "720p", (720, 1280)),
        ((1000, 1000), "480p", (624, 624)),  # the official code's square 480p size
        ((1000, 1000), "720p", (960, 960)),
        ((4000, 3000), "480p", (720, 544)),
    ],
)
def test_output_size_keeps_aspect_at_the_area(size, resolution, expected):
    assert output_size(*size, resolution) == expected


def test_output_size_rules_hold_for_many_shapes():
    for resolution, area in (("480p", 832 * 480), ("720p", 1280 * 720)):
        for width in range(200, 4001, 97):
            for height in range(max(200, -(-width // 4)), min(4001, width * 4), 89):
                out_w, out_h = output_size(width, height, resolution)
                assert out_w % 16 == 0 and out_h % 16 == 0
                assert out_w * out_h <= area
                assert out_w * out_h >= area * 0.85
                assert abs(out_w / out_h - width / height) / (width / height) < 0.06


def test_extreme_aspect_ratio_is_refused():
    with pytest.raises(InputError, match=r"^image: aspect ratio 2000x100 .*between 1:4 and 4:1"):
        output_size(2000, 100, "480p")


def test_fit_image_covers_and_centre_crops():
    source = Image.new("RGB", (300, 100), (255, 0, 0))
    source.paste((0, 0, 255), (100, 0, 200, 100))  # blue middle third
    fitted = fit_image(source, (96, 96))
    assert fitted.size == (96, 96)
    assert fitted.getpixel((48, 48)) == (0, 0, 255)
    assert fitted.getpixel((2, 48))[2] > 200  # centre crop keeps the middle, not the red edges


def test_the_previewed_crop_is_the_part_of_the_source_the_worker_keeps():
    """The playground draws `crop_in_source`; cropping the source there and resizing gives fit_image's frame."""
    rng = np.random.default_rng(3)
    for width, height in ((300, 100), (640, 480), (480, 853), (1000, 1000)):
        source = (
            Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
            .resize((width // 8, height // 8), Image.Resampling.BILINEAR)
            .resize((width, height), Image.Resampling.BILINEAR)
        )  # smooth, so resampling differences stay small
        size = output_size(width, height, "480p") if max(width, height) / min(width, height) <= 4 else (96, 96)
        box = crop_in_source(width, height, size)
        assert abs(box["left"] * 2 + box["width"] - width) <= 1 and abs(box["top"] * 2 + box["height"] - height) <= 1
        assert abs(box["width"] / box["height"] - size[0] / size[1]) < 0.01
        by_box = source.crop((box["left"], box["top"], box["left"] + box["width"], box["top"] + box["height"])).resize(
            size, Image.Resampling.LANCZOS
        )
        diff = np.abs(np.asarray(by_box, dtype=float) - np.asarray(fit_image(source, size), dtype=float)).mean()
        assert diff < 4, (width, height, diff)


@pytest.mark.parametrize("fmt, mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_decodes_each_format_from_base64_and_data_uri(fmt, mime):
    data = encode(picture(), fmt)
    for value in (b64(data), data_uri(data, mime), "\n" + b64(data) + "\n"):
        image = load_image("image", value)
        assert image.mode == "RGB" and image.size == (208, 120)


def test_format_is_identified_by_decoding_not_by_the_declared_type():
    jpeg = encode(picture(), "JPEG")
    assert load_image("image", data_uri(jpeg, "image/png")).size == (208, 120)


def test_gif_gives_its_first_frame():
    frames = [Image.new("P", (64, 48), color) for color in (10, 200)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    first = np.asarray(frames[0].convert("RGB"))
    assert np.array_equal(np.asarray(load_image("image", b64(gif))), first)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    jpeg = encode(picture(208, 120), "JPEG", exif=exif.tobytes())
    assert load_image("image", b64(jpeg)).size == (120, 208)


def test_alpha_is_flattened_onto_white():
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 16, 32))
    image = load_image("image", b64(encode(rgba, "PNG")))
    assert image.getpixel((24, 10)) == (255, 255, 255)
    assert image.getpixel((4, 10)) == (255, 0, 0)


def test_sixteen_bit_and_cmyk_images_become_rgb():
    gray16 = Image.fromarray((np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16))
    image = load_image("image", b64(encode(gray16, "PNG")))
    assert image.mode == "RGB" and image.getpixel((63, 63))[0] == 255 and image.getpixel((0, 0))[0] == 0
    cmyk = load_image("image", b64(encode(picture(mode="CMYK"), "JPEG")))
    assert cmyk.mode == "RGB" and cmyk.size == (208, 120)


def test_unsupported_and_unreadable_data_are_refused():
    with pytest.raises(
        InputError, match=r"^image: BMP images are not supported; allowed formats: JPEG, PNG, WebP, GIF"
    ):
        load_image("image", b64(encode(picture(), "BMP")))
    with pytest.raises(InputError, match=r"^last_image: not a readable image"):
        load_image("last_image", b64(b"this is not an image at all"))
    with pytest.raises(InputError, match=r"^image: not an http\(s\) URL, a data URI or valid base64"):
        load_image("image", "not base64 at all!")
    with pytest.raises(InputError, match=r"^image: a data URI must look like"):
        load_image("image", "data:text/plain;base64,aGVsbG8=")


def test_truncated_image_gives_a_clear_error():
    png = encode(picture(400, 300), "PNG")
    with pytest.raises(InputError, match=r"^image: the PNG data is truncated or corrupt"):
        load_image("image", b64(png[: len(png) // 2]))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size but holds almost no data: a decompression bomb's shape."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_pixel_count_is_checked_before_decoding():
    with pytest.raises(InputError, match=r"^image: 8000x6000 is 48.0 megapixels; at most 40 megapixels"):
        decode_image("image", _png_header_only(8000, 6000))


def test_byte_cap_applies_to_base64(monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 1000)
    with pytest.raises(InputError, match=r"^image: the base64 image is larger than allowed; images may be at most"):
        load_image("image", b64(b"\0" * 5000))


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "gopher://x/"])
def test_only_http_https_data_and_base64_are_accepted(url):
    with pytest.raises(InputError, match=r"^image: URL scheme '\w+' is not allowed; allowed: http, https, data"):
        load_image("image", url)


@pytest.mark.parametrize("width, height", [(20_000, 20_000), (65_535, 65_535)])
def test_decompression_bombs_past_pillows_own_guard_get_the_same_clear_error(width, height):
    """Pillow refuses these inside Image.open before telling the size; ours reads it from the header."""
    megapixels = f"{width * height / 1e6:.1f}"
    expected = rf"^image: {width}x{height} is {megapixels} megapixels; at most 40 megapixels"
    with pytest.raises(InputError, match=expected):
        decode_image("image", _png_header_only(width, height))
    assert Image.MAX_IMAGE_PIXELS is not None, "Pillow's own guard must be back in place for everything else"
