"""Which data a trained teacher, adapter or head saw, and refusing to combine it with other splits.

A model trained on one split of a dataset and used on a cache of the same dataset split with
another seed has seen that cache's test images in training: its accuracy there is leakage, not
skill. Every place that loads something trained elsewhere (`extract --teacher/--adapter`,
`train gate --distill`, `baselines --distill`, the pipeline's reused heads) calls a check here,
which compares the manifest hashes (sorted path + label per split, `DatasetIndex.manifest_hash`)
recorded at training time with the ones of the data at hand, and refuses a mismatch in one line.

Models trained on another dataset (cross-dataset teachers) are not refused: their provenance
records where they came from. A distill head must come from the same data (dataset and splits).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vea_bench.errors import ConfigError, ModelError


@dataclass(frozen=True)
class Lineage:
    """The data a run was trained on (or a cache holds): dataset, label space, per-split manifests."""

    dataset: str | None
    manifests: dict[str, str]
    split_seed: int | None = None
    label_space: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "manifest_hashes": dict(self.manifests), "split_seed": self.split_seed,
                "label_space": self.label_space}


def of_index(index: Any) -> Lineage:
    """The lineage of a loaded `DatasetIndex`."""
    return Lineage(index.name, index.manifest_hashes(), index.split_seed, index.label_space.name)


def of_provenance(prov: Mapping[str, Any]) -> Lineage:
    """The lineage in a cache's `provenance()` (what run records store under ``cache``) or `Lineage.to_dict`."""
    return Lineage(prov.get("dataset"), dict(prov.get("manifest_hashes") or {}), prov.get("split_seed"),
                   prov.get("label_space"))


def mismatch(trained: Lineage, here: Lineage) -> str | None:
    """Why ``trained`` and ``here`` are not the same splits (None when they are)."""
    if trained.dataset != here.dataset:
        return f"dataset {trained.dataset} vs {here.dataset}"
    common = [s for s in ("train", "val", "test") if s in trained.manifests and s in here.manifests]
    if not common:
        return "no split in common"
    differ = [s for s in common if trained.manifests[s] != here.manifests[s]]
    if not differ:
        return None
    s = differ[0]
    why = f"{s} manifest {trained.manifests[s][:12]} vs {here.manifests[s][:12]}"
    if trained.split_seed != here.split_seed:
        why += f", split seed {trained.split_seed} vs {here.split_seed}"
    return why


_LEAK = "its training images may be this data's test images"


def check_head(where: str | Path, trained: Lineage | None, here: Lineage) -> None:
    """A saved head must have been trained on exactly these splits of this dataset."""
    if trained is None:
        raise ConfigError(f"{where}: no record of the data this head was trained on; retrain it on this cache")
    why = mismatch(trained, here)
    if why is not None:
        raise ConfigError(f"{where}: head trained on other data than this cache ({why}); {_LEAK}, "
                          f"so it is refused: train the head on this cache")


def head_lineage(artifact_dir: Path, meta: Mapping[str, Any], results_dir: str | Path) -> Lineage | None:
    """A saved head's training data: its artifacts config (``data``), else its run record's ``cache``."""
    if isinstance(meta.get("data"), Mapping):
        return of_provenance(meta["data"])
    run_id = meta.get("run_id")
    if not run_id:
        return None
    from vea_bench.results import ResultsStore

    for rec in [ResultsStore(base).record_path(kind, run_id) for base in (artifact_dir.parent.parent, Path(results_dir))
                for kind in ("distill", "gate")]:
        try:
            cache = json.loads(rec.read_text()).get("cache")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(cache, Mapping):
            return of_provenance(cache)
    return None


def _check_model(what: str, trained: Lineage, here: Lineage, fix: str) -> None:
    """Same dataset (and label space) with other splits: refused. Another dataset: allowed."""
    if trained.dataset != here.dataset or not trained.manifests:
        return
    if trained.label_space and here.label_space and trained.label_space != here.label_space:
        return  # another view of the dataset; label checks elsewhere decide whether it fits
    why = mismatch(trained, here)
    if why is not None:
        raise ModelError(f"{what} was trained on {trained.dataset} with other splits than this run's ({why}); "
                         f"{_LEAK}: {fix}")


def check_teacher(path: str | Path, index: Any) -> None:
    """Refuse a vea-bench teacher trained on another split of the dataset being extracted."""
    p = Path(path)
    cfg_path = (p.parent if p.is_file() else p) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        return  # load_teacher reports unreadable checkpoints
    if not isinstance(cfg, dict):
        return
    tc = cfg.get("train_config") if isinstance(cfg.get("train_config"), dict) else {}
    trained = Lineage(cfg.get("dataset"), dict(tc.get("manifests") or {}), tc.get("split_seed"),
                      cfg.get("label_space"))
    _check_model(f"teacher {path}", trained, of_index(index),
                 "extract with the teacher's --seed, or train a teacher on these splits")


def check_adapter(adapter: str | Path, index: Any) -> None:
    """Refuse a QLoRA adapter trained on another train split of the dataset being extracted."""
    from vea_bench.train.qlora import ADAPTER_META

    try:
        meta = json.loads((Path(adapter) / ADAPTER_META).read_text())
    except (OSError, ValueError):
        return  # not ours (a peft adapter from elsewhere): nothing recorded to check
    cfg = meta.get("config") if isinstance(meta, dict) and isinstance(meta.get("config"), dict) else {}
    train = cfg.get("manifest_train")
    trained = Lineage(cfg.get("dataset"), {"train": train} if train else {}, None, cfg.get("label_space"))
    _check_model(f"adapter {adapter}", trained, of_index(index),
                 "extract with the adapter's --seed, or tune an adapter on these splits")
