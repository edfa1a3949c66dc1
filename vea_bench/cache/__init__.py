"""The HDF5 feature cache (see `vea_bench.cache.store` for the on-disk layout).

`store` holds the file format, writers and readers; `ops` the whole-file operations built on it
(shard helpers, merging shards, end-to-end verification, repair, summaries for `vea-bench cache
info`), using only the store's public methods; `guard` the writer lock, free-space checks and
clean stops on SIGTERM / SIGINT; `fingerprints` the per-image content fingerprints that find
changed images. `SplitSpec` (`vea_bench.splits`) and `package_versions` (`vea_bench.versions`)
live below the cache, so datasets and run records need not import it; they are re-exported here.
"""
from vea_bench.cache.fingerprints import ChangedRow, changed_rows
from vea_bench.cache.ops import (
    MergeReport,
    RepairReport,
    VerifyReport,
    cache_summary,
    delete_cache_files,
    merge_caches,
    parse_shard,
    repair_cache,
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
    VOLATILE_PROVENANCE,
    DamagedSourceError,
    FeatureCache,
    FieldSpec,
    SourceData,
    SourceInfo,
    SourceWriter,
    cache_files,
    sources_dir,
)
from vea_bench.splits import SplitSpec
from vea_bench.versions import package_versions

__all__ = [
    "ChangedRow", "DamagedSourceError", "RepairReport", "cache_files", "changed_rows", "delete_cache_files",
    "repair_cache", "sources_dir",
    "ROW_FAILED", "ROW_MISSING", "ROW_OK", "SCHEMA_VERSION", "SOURCE_KINDS",
    "VOLATILE_PROVENANCE", "FeatureCache", "FieldSpec", "MergeReport", "SourceData", "SourceInfo",
    "SourceWriter", "SplitSpec", "VerifyReport", "cache_summary", "merge_caches", "package_versions",
    "parse_shard", "shard_path", "shard_rows", "verify_cache",
]
