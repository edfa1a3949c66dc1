"""Opening images safely, and the cheap per-file checks loaders can afford on 100k files.

Loaders never decode: a `stat` tells missing and zero-byte files apart cheaply; decoding failures
are found by `check_dataset` and by extraction, both through `open_image` / `decode_image`, so a
broken file always becomes a one-line `DatasetError` and never a traceback.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image

from vea_bench.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


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


def decode_image(data: bytes, where: str = "") -> Image.Image:
    """Decode ``data`` fully to RGB; any failure is a one-line `DatasetError` naming ``where``."""
    loc = f"{where}: " if where else ""
    if not data:
        raise DatasetError(f"{loc}zero-byte image file")
    try:
        with warnings.catch_warnings():
            # Palette images with transparency warn on convert; the pixels are still what we want.
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            im.load()
            if im.mode in ("P", "PA", "LA", "RGBA"):
                im = im.convert("RGBA")
            return im.convert("RGB")
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, bomb errors)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetError(f"{loc}cannot decode image ({msg})") from None


def open_image(path: str | Path) -> Image.Image:
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
    return decode_image(data, str(p))
