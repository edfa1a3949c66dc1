"""vea-bench: reproduce, ablate and extend VLM + knowledge-distillation methods for visual emotion analysis.

The expensive models run once per image (`vea-bench extract`) into an HDF5 cache; every head,
sweep and baseline then trains against that cache in seconds.
"""
from __future__ import annotations

__version__ = "0.1.0"

from vea_bench.errors import VeaError

__all__ = ["VeaError", "__version__"]
