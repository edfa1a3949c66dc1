"""The HDF5 feature cache (see `vea_bench.cache.store` for the on-disk layout)."""
from vea_bench.cache.store import (
    ROW_FAILED,
    ROW_MISSING,
    ROW_OK,
    SCHEMA_VERSION,
    SOURCE_KINDS,
    FeatureCache,
    FieldSpec,
    SourceData,
    SourceInfo,
    SourceWriter,
    SplitSpec,
    package_versions,
)

__all__ = [
    "ROW_FAILED", "ROW_MISSING", "ROW_OK", "SCHEMA_VERSION", "SOURCE_KINDS", "FeatureCache",
    "FieldSpec", "SourceData", "SourceInfo", "SourceWriter", "SplitSpec", "package_versions",
]
