"""Versions of the packages that decide the numbers, for cache provenance and run records.

A leaf module (no other vea_bench import but the package version) so that datasets, records
and the cache can all stamp provenance without importing one another.
"""
from __future__ import annotations

from importlib import metadata

from vea_bench import __version__

# The packages whose versions can change a result (models, numerics, file format).
TRACKED_PACKAGES: tuple[str, ...] = ("torch", "transformers", "peft", "timm", "h5py", "numpy", "bitsandbytes")


def package_versions() -> dict[str, str]:
    """``{"vea-bench": ..., "torch": ..., ...}`` for the tracked packages that are installed."""
    out = {"vea-bench": __version__}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out
