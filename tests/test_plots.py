"""`vea-bench plot`: Figures 1 and 3 and confusion matrices are written, non-empty, at the requested size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from _report_helpers import record, write_realistic_results
from vea_bench.errors import ConfigError
from vea_bench.report.plots import (
    FigureStyle,
    alpha_curves,
    complementarity_data,
    figure1,
    render_plots,
)
from vea_bench.report.tables import load_results
from vea_bench.results import ResultsStore
from vea_bench_cli.main import app


@pytest.fixture(scope="module")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    write_realistic_results(root, seeds=(0, 1, 2))
    return root


def test_alpha_curves_mean_and_std_over_seeds(realistic: Path) -> None:
    res = load_results(realistic)
    curves = {c.dataset: c for c in alpha_curves(res)}
    assert set(curves) == {"fi", "emotion6"}
    c = curves["fi"]
    assert c.alphas == [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0] and c.n == [3] * 7
    members = [r for r in res.records if r.group == "alpha-fi" and r.config["alpha"] == 0.3]
    acc = np.array([r.accuracy() for r in members]) * 100
    kl = np.array([r.metrics["test"]["kl_to_teacher"] for r in members])
    i = c.alphas.index(0.3)
    assert c.acc_mean[i] == pytest.approx(acc.mean()) and c.acc_std[i] == pytest.approx(acc.std(ddof=1))
    assert c.kl_mean[i] == pytest.approx(kl.mean()) and c.kl_std[i] == pytest.approx(kl.std(ddof=1))


def test_complementarity_fractions(realistic: Path) -> None:
    res = load_results(realistic)
    data = complementarity_data(res, ["fi"])
    rec = next(r for r in res.records if r.kind == "complementarity" and r.dataset == "fi")
    counts = rec.metrics["test"]["extra"]
    total = sum(counts[k] for k in ("teacher_only", "vlm_only", "both", "neither"))
    assert data["fi"]["vlm_only"] == pytest.approx(counts["vlm_only"] / total)
    assert sum(data["fi"].values()) == pytest.approx(1.0)


def test_render_plots_writes_png_and_pdf_of_the_requested_size(realistic: Path, tmp_path: Path) -> None:
    style = FigureStyle(width=3.5, dpi=100)
    # Flickr: one EmoVLM-KD and one distill config, so two confusion matrices (latest seed of each).
    written, missing = render_plots(load_results(realistic), tmp_path, datasets=["flickr"], formats=("png", "pdf"),
                                    style=style, confusion="latest")
    assert missing and "alpha sweep" in missing[0]          # no alpha sweep on Flickr: said, not drawn
    w3, missing3 = render_plots(load_results(realistic), tmp_path, datasets=["fi"], formats=("png",),
                                style=style, confusion="none")
    assert missing3 == []
    written += w3
    names = {p.name for p in written}
    assert {"figure1-complementarity.png", "figure1-complementarity.pdf", "figure3-alpha.png"} <= names
    confusions = [p for p in written if p.name.startswith("confusion-") and p.suffix == ".png"]
    assert len(confusions) == 2 and {"gate", "distill"} == {p.name.split("-")[1] for p in confusions}
    for p in written:
        assert p.stat().st_size > 2000, p
        if p.suffix == ".pdf":
            assert p.read_bytes()[:4] == b"%PDF"
    for p in [tmp_path / "figure1-complementarity.png", tmp_path / "figure3-alpha.png", *confusions]:
        with Image.open(p) as im:
            w, h = im.size
            assert w == 350, (p.name, im.size)               # 3.5 in at 100 dpi, exactly
            px = np.asarray(im.convert("L"))
            assert px.std() > 10                             # not blank
    with Image.open(tmp_path / "figure3-alpha.png") as im:
        assert im.size[1] == round((0.35 + 1.75) * 100)        # one panel (FI only)


def test_missing_figure_data_is_explained(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ResultsStore(tmp_path).save(record("teacher", "ViT", "fi", {"arch": "vit_base_patch16_224"}, 0.7, rng))
    res = load_results(tmp_path)
    with pytest.raises(ConfigError, match="complementarity"):
        figure1(res)
    written, missing = render_plots(res, tmp_path / "out", style=FigureStyle(dpi=50))
    assert written == [] and len(missing) == 2 and "alpha sweep" in missing[1]


def test_cli_plot(realistic: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["plot", "-r", str(realistic), "-o", str(tmp_path), "-d", "emotion6", "--format", "png",
                              "--width", "7", "--dpi", "80", "--confusion", "none"])
    assert out.exit_code == 0, out.output
    with Image.open(tmp_path / "figure1-complementarity.png") as im:
        assert im.size[0] == 560
    assert not list(tmp_path.glob("confusion-*")) and not list(tmp_path.glob("*.pdf"))
    bad = runner.invoke(app, ["plot", "-r", str(realistic), "-o", str(tmp_path), "--format", "gif"])
    assert bad.exit_code != 0 and "gif" in bad.stderr
    empty = runner.invoke(app, ["plot", "-r", str(tmp_path / "none"), "-o", str(tmp_path)])
    assert empty.exit_code != 0 and "vea-bench demo" in empty.stderr
