"""Every registered baseline runs alone, and its record and predictions go through the results store and back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _heads_helpers import tiny_cache
from vea_bench.cache.store import FeatureCache
from vea_bench.errors import CacheError, VeaError
from vea_bench.heads.baselines import BASELINES, Baseline, BaselineContext, run_baselines
from vea_bench.heads.data import load_head_data
from vea_bench.heads.pipeline import DistillConfig, distill_record, load_distill_run, train_distill
from vea_bench.heads.synthetic_cache import make_complementary_cache
from vea_bench.results import RUN_KINDS, ResultsStore, RunOutput


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("reg")
    cache = make_complementary_cache(root / "c.h5", n_train=300, n_val=100, n_test=100, dim=16, seed=2)
    with FeatureCache.open(cache) as c:
        data = load_head_data(c, need=("visual", "teacher"))
    res = train_distill(data, [DistillConfig(lr=1e-3, epochs=2, batch_size=64, lr_scaling="none")])[0]
    rec = distill_record(data, res, results_dir=root / "results")
    return cache, root / "results", rec.run_id


@pytest.mark.parametrize("name", BASELINES.names())
def test_every_baseline_runs_alone_and_round_trips_through_the_store(setup, name: str, tmp_path: Path) -> None:
    cache, results, run_id = setup
    with FeatureCache.open(cache) as c:
        data = load_head_data(c, need=("visual", "teacher"))
        head = load_distill_run(run_id, results, data)
        outs, skipped = run_baselines(c, only=[name], distill=head, distill_data=data, probe_iters=20)
    assert skipped == [] and outs and all(isinstance(o, RunOutput) for o in outs)
    store = ResultsStore(tmp_path)
    paths = store.save_all(outs)
    for out, path in zip(outs, paths):
        rec = out.record
        assert rec.kind in RUN_KINDS and path == store.record_path(rec) and path.is_file()
        back = store.load(rec.run_id)
        assert back.metrics["test"]["accuracy"] == pytest.approx(rec.metrics["test"]["accuracy"])
        assert back.cache["manifest_hashes"] == rec.cache["manifest_hashes"]
        p = store.predictions(back)
        assert (p is None) == (not out.predictions)
        if p is not None:   # its stored per-image predictions are the ones its accuracy was computed from
            assert float(np.mean(p.correct)) == pytest.approx(rec.metrics["test"]["accuracy"])


def test_a_baseline_lacking_its_sources_is_skipped_with_its_reason(tmp_path: Path) -> None:
    cache = tiny_cache(tmp_path / "c.h5", with_teacher=False)
    with FeatureCache.open(cache) as c:
        outs, skipped = run_baselines(c, only=["vlm", "teacher", "oracle"])
        assert [o.record.kind for o in outs] == ["vlm-eval"]
        assert skipped == ["teacher: no teacher source", "oracle: needs both a vlm and a teacher source"]
        with pytest.raises(CacheError, match="no baseline could run"):
            run_baselines(c, only=["teacher"])
        with pytest.raises(VeaError, match="unknown baseline 'nope'"):
            run_baselines(c, only=["nope"])


def test_a_baseline_registered_later_runs_with_the_others(tmp_path: Path) -> None:
    @BASELINES.register("first-class")
    class FirstClass(Baseline):
        """Always class 0 (a stand-in for a user's baseline)."""

        needs = ("vlm",)

        def run(self, ctx: BaselineContext) -> list[RunOutput]:
            from vea_bench.metrics import split_metrics

            c = ctx.cache
            mets = {s: split_metrics(c.labels(s), np.zeros(len(c.labels(s)), dtype=int), c.label_names)
                    for s in c.splits}
            return [ctx.output("baseline", "first-class", {}, mets, t0=0.0)]

    try:
        cache = tiny_cache(tmp_path / "c.h5")
        with FeatureCache.open(cache) as c:
            outs, _ = run_baselines(c)
            y = c.labels("test")
        methods = [o.record.method for o in outs]
        assert methods[-1] == "first-class" and "VLM" in methods
        assert outs[-1].record.metrics["test"]["accuracy"] == pytest.approx(float(np.mean(y == 0)))
    finally:
        BASELINES.remove("first-class")
