"""Opening images safely, and the cheap per-file checks loaders can afford on 100k files.

Loaders never decode: a `stat` tells missing and zero-byte files apart cheaply; decoding failures
are found by `check_dataset` and by extraction, both through `open_image` / `decode_image`, so a
broken file always becomes a one-line `DatasetError` and never a traceback.

Decoding to 8-bit RGB, whatever the file holds (`decoding_provenance` records the rules):

- EXIF orientation is applied (``exif="apply"``: phone photos, common in Flickr and Instagram,
  would otherwise reach the models rotated); ``exif="ignore"`` keeps the stored pixel order, as
  the reference implementation's ``Image.open(p).convert("RGB")`` does.
- 16-bit greyscale (PIL modes ``I;16*``, and ``I`` holding 16-bit values) is scaled to 8 bits by
  its high byte, the way PIL itself reduces 16-bit colour PNGs, instead of being clipped at 255
  (PIL's own conversion turns almost every pixel white). ``I`` beyond 16 bits is scaled by its
  maximum; float images (``F``) in [0, 1] are scaled by 255, others clipped to [0, 255].
- Palette, grey+alpha and RGBA images drop their alpha channel; CMYK and YCbCr go through PIL's
  conversion.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from vea_bench.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
EXIF_MODES = ("apply", "ignore")
DECODER_VERSION = "vea_bench.datasets.images/2"

log = logging.getLogger(__name__)


def check_exif_mode(exif: str) -> str:
    """``exif`` if valid, else a one-line `ConfigError` listing the modes."""
    if exif not in EXIF_MODES:
        from vea_bench.errors import ConfigError

        raise ConfigError(f"unknown EXIF mode '{exif}' (choices: {', '.join(EXIF_MODES)})")
    return exif


def decoding_provenance(exif: str = "apply") -> dict[str, Any]:
    """How images were decoded, for cache provenance (a resume with other rules is refused)."""
    return {
        "decoder": DECODER_VERSION,
        "exif_orientation": check_exif_mode(exif),
        "high_bit_depth": "scaled to 8 bit (16-bit: high byte)",
    }


def is_image_name(name: str) -> bool:
    """True for a visible file whose extension is an image's (case-insensitive)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Image files under ``folder``, sorted by path (hidden files and non-images ignored)."""
    out: list[Path] = []
    stack = [folder]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    if recursive:
                        stack.append(Path(e.path))
                elif is_image_name(e.name):
                    out.append(Path(e.path))
    return sorted(out)


def file_problem(path: Path) -> tuple[str, str] | None:
    """``(kind, reason)`` when ``path`` is missing or zero bytes, else None; costs one ``stat``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing", "file not found"
    except OSError as exc:
        return "unreadable", f"cannot stat: {exc.strerror or exc}"
    if size == 0:
        return "zero-byte", "zero-byte file"
    return None


def _to_8bit(im: Image.Image) -> Image.Image:
    """An ``I;16*`` / ``I`` / ``F`` image as 8-bit greyscale, scaled rather than clipped."""
    arr = np.asarray(im)
    if im.mode == "F":
        a = arr.astype(np.float64)
        finite = a[np.isfinite(a)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            a = a * 255.0
        out = np.clip(np.nan_to_num(a), 0, 255).round()
    else:
        a = arr.astype(np.int64)
        lo = int(a.min()) if a.size else 0
        hi = int(a.max()) if a.size else 0
        if lo >= 0 and hi <= 0xFFFF:
            out = a >> 8
        else:  # wider than 16 bits: scale its range onto 0..255
            a = a - min(lo, 0)
            top = max(int(a.max()), 1)
            out = (a * 255 + top // 2) // top
    return Image.fromarray(out.astype(np.uint8))  # 2-D uint8: mode L


def decode_image(data: bytes, where: str = "", *, exif: str = "apply") -> Image.Image:
    """Decode ``data`` fully to 8-bit RGB (rules in the module doc); a failure is one line naming ``where``."""
    check_exif_mode(exif)
    loc = f"{where}: " if where else ""
    if not data:
        raise DatasetError(f"{loc}zero-byte image file")
    try:
        with warnings.catch_warnings():
            # Palette images with transparency warn on convert; the pixels are still what we want.
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            im.load()
            if exif == "apply":
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception as exc:  # noqa: BLE001  a malformed EXIF block: keep the stored orientation
                    log.debug("%signoring unreadable EXIF orientation (%s)", loc, exc)
            if im.mode.startswith("I") or im.mode == "F":
                im = _to_8bit(im)
            if im.mode in ("P", "PA", "LA", "RGBA"):
                im = im.convert("RGBA")
            return im.convert("RGB")
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, bomb errors)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"{loc}cannot decode image ({msg})") from None


def open_image(path: str | Path, *, exif: str = "apply") -> Image.Image:
    """Open ``path`` as a fully decoded RGB image, or raise a one-line `DatasetError` saying why.

    Decoding happens here (not lazily in PIL) so a truncated file fails at this call, where the
    caller can mark the row failed, rather than later inside a model's preprocessing.
    """
    p = Path(path)
    problem = file_problem(p)
    if problem is not None:
        raise DatasetError(f"{p}: {problem[1]}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{p}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, str(p), exif=exif)
