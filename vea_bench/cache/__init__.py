"""The HDF5 feature cache (see `vea_bench.cache.store` for the on-disk layout).

`store` holds the file format, writers and readers; `ops` the whole-file operations built on it
(shard helpers, merging shards, end-to-end verification, summaries for `vea-bench cache info`).
"""
from vea_bench.cache.ops import (
    MergeReport,
    VerifyReport,
    cache_summary,
    merge_caches,
    parse_shard,
    shard_path,
    shard_rows,
    verify_cache,
)
from vea_bench.cache.store import (
    ROW_FAILED,
    ROW_MISSING,
    ROW_OK,
    SCHEMA_VERSION,
    SOURCE_KINDS,
    STANDARD_FIELDS,
    VOLATILE_PROVENANCE,
    FeatureCache,
    FieldSpec,
    SourceData,
    SourceInfo,
    SourceWriter,
    SplitSpec,
    package_versions,
)

__all__ = [
    "ROW_FAILED", "ROW_MISSING", "ROW_OK", "SCHEMA_VERSION", "SOURCE_KINDS", "STANDARD_FIELDS",
    "VOLATILE_PROVENANCE", "FeatureCache", "FieldSpec", "MergeReport", "SourceData", "SourceInfo",
    "SourceWriter", "SplitSpec", "VerifyReport", "cache_summary", "merge_caches", "package_versions",
    "parse_shard", "shard_path", "shard_rows", "verify_cache",
]
