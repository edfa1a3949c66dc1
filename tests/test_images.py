"""Image decoding of odd formats: 16-bit, EXIF-rotated, palette, alpha, CMYK, greyscale (issue 15)."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vea_bench.datasets.images import decode_image, decoding_provenance
from vea_bench.errors import ConfigError


def _png16(arr: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (PIL cannot write 16-bit colour): 0 grey, 2 RGB."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, format=fmt, **kw)
    return b.getvalue()


def _rotated(orientation: int = 8) -> bytes:
    """EXIF bytes saying 'rotate to display' (8: 90 degrees counter-clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _ramp16() -> np.ndarray:
    return (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535 in 256 steps


def test_16bit_grey_png_is_scaled_not_clipped() -> None:
    g = _ramp16()
    for data in (_png16(g, 0), _save(Image.fromarray(g), "PNG")):
        out = np.asarray(decode_image(data))
        assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
        # PIL's own convert("RGB") clips: every value >= 255 becomes white.
        np.testing.assert_array_equal(out[..., 0], (g >> 8).astype(np.uint8))
        assert (out[..., 0] == 255).mean() < 0.01
        assert len(np.unique(out)) == 256


def test_16bit_rgb_png_keeps_its_colours() -> None:
    g = _ramp16()
    rgb = np.stack([g, g // 2, 65535 - g], -1)
    out = np.asarray(decode_image(_png16(rgb, 2)))
    np.testing.assert_array_equal(out, (rgb >> 8).astype(np.uint8))


def test_32bit_int_and_float_images_are_scaled() -> None:
    big = (np.arange(64).reshape(8, 8) * 1_000_000).astype(np.int32)
    out = np.asarray(decode_image(_save(Image.fromarray(big), "TIFF")))[..., 0]
    assert out[0, 0] == 0 and out[-1, -1] == 255 and len(np.unique(out)) > 32
    f = (np.arange(64).reshape(8, 8) / 63.0).astype(np.float32)
    out = np.asarray(decode_image(_save(Image.fromarray(f), "TIFF")))[..., 0]
    assert out[0, 0] == 0 and out[-1, -1] == 255 and 120 <= out[4, 0] <= 135


def _exif_jpeg(orientation: int) -> bytes:
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # a blue band on the stored left edge
    return _save(im, "JPEG", exif=_rotated(orientation), quality=95)


def test_exif_orientation_is_applied_by_default_and_can_be_ignored() -> None:
    data = _exif_jpeg(6)  # 6: rotate 90 degrees clockwise to display
    shown = decode_image(data)
    assert shown.size == (20, 40)
    top = np.asarray(shown)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the stored left edge is now on top
    stored = decode_image(data, exif="ignore")  # the reference's behaviour
    assert stored.size == (40, 20)
    assert np.asarray(stored)[10, 2][2] > 200
    with pytest.raises(ConfigError, match="unknown EXIF mode"):
        decode_image(data, exif="rotate")


def test_decoding_is_recorded() -> None:
    assert decoding_provenance()["exif_orientation"] == "apply"
    assert decoding_provenance("ignore")["exif_orientation"] == "ignore"


@pytest.mark.parametrize("mode,colour,expect", [
    ("L", 128, (128, 128, 128)),
    ("1", 1, (255, 255, 255)),
    ("LA", (90, 0), (90, 90, 90)),
    ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
    ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
])
def test_grey_and_alpha_images_decode_to_rgb_upright(mode, colour, expect) -> None:
    data = _save(Image.new(mode, (6, 5), colour), "PNG", exif=_rotated())
    out = decode_image(data)
    assert out.mode == "RGB" and out.size == (5, 6)  # turned upright by its EXIF orientation
    assert tuple(int(v) for v in np.asarray(out)[2, 2]) == expect
    assert decode_image(data, exif="ignore").size == (6, 5)


def test_palette_with_transparency_and_gif() -> None:
    p = Image.new("P", (6, 4), 1)
    p.putpalette([0, 0, 0, 200, 40, 10] + [0] * 762)
    out = decode_image(_save(p, "PNG", transparency=0, exif=_rotated()))
    assert out.mode == "RGB" and out.size == (4, 6)
    assert tuple(np.asarray(out)[1, 1]) == (200, 40, 10)
    out = decode_image(_save(p, "GIF"), exif="ignore")
    assert out.size == (6, 4) and tuple(np.asarray(out)[1, 1]) == (200, 40, 10)


def test_cmyk_jpeg_decodes_to_rgb_upright() -> None:
    data = _save(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG", quality=95, exif=_rotated(6))
    out = decode_image(data)
    r, g, b = (int(v) for v in np.asarray(out)[8, 4])
    assert out.mode == "RGB" and out.size == (8, 16)
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 1, 1, 0) is red
