"""The HDF5 feature cache (see `vea_bench.cache.layout` for the two on-disk layouts).

Rooms: `store` is the public face (`FeatureCache`); `index` the index file and its atomic
commits; `sources` the per-source files, their handles, the disk reserve and the rebuild after a
crash; `writer` writing rows of one source; `messages` every one-line message about a source;
`guard` the writer lock, free-space checks and clean stops on SIGTERM / SIGINT; `ops` the
whole-cache operations on the store's public methods (shard helpers, summaries, repair), with
`merge` (shards into one cache), `verify` (end-to-end checks) and `portable` (pack, copy, move);
`fingerprints` the per-image content fingerprints that find changed images. `SplitSpec`
(`vea_bench.splits`) and `package_versions` (`vea_bench.versions`) live below the cache, so
datasets and run records need not import it; they are re-exported here.
"""
from vea_bench.cache.fingerprints import ChangedRow, changed_rows
from vea_bench.cache.ops import (
    MergeReport,
    PortableReport,
    RepairReport,
    VerifyReport,
    cache_summary,
    copy_cache,
    damaged_sources,
    delete_cache_files,
    merge_caches,
    move_cache,
    pack_cache,
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
    SourcesNotCopiedError,
    SourceWriter,
    cache_files,
    sources_dir,
)
from vea_bench.splits import SplitSpec
from vea_bench.versions import package_versions

__all__ = [
    "ChangedRow", "DamagedSourceError", "RepairReport", "cache_files", "changed_rows", "delete_cache_files",
    "repair_cache", "sources_dir", "damaged_sources", "copy_cache", "move_cache", "pack_cache", "PortableReport",
    "ROW_FAILED", "ROW_MISSING", "ROW_OK", "SCHEMA_VERSION", "SOURCE_KINDS", "SourcesNotCopiedError",
    "VOLATILE_PROVENANCE", "FeatureCache", "FieldSpec", "MergeReport", "SourceData", "SourceInfo",
    "SourceWriter", "SplitSpec", "VerifyReport", "cache_summary", "merge_caches", "package_versions",
    "parse_shard", "shard_path", "shard_rows", "verify_cache",
]
