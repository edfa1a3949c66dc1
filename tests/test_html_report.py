"""The study's HTML report: written by the pipeline's report stage, opened in a real headless Chromium.

A small experiment (tiny Qwen2-VL, tiny timm ViT, synthetic FI-layout set; no LoRA stage or sweep,
to stay fast) runs end to end; its
report stage writes ``<workdir>/report/index.html``. Chromium (Debian's ``chromium`` package,
installed by ``.ci/run`` where apt is available) loads the page from the file system inside a
harness page that counts tables and broken images, then takes a screenshot.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vea_bench.results import ResultsStore, load_for
from vea_bench_cli.main import app

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
EXPECTED_TABLES = {"1", "2", "3", "4", "ext", "calibration", "group-class"}


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "table" and a.get("data-table"):
            self.tables.append(str(a["data-table"]))
        if tag == "img":
            self.images.append(str(a.get("src")))
        if tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))


def _experiment(tmp: Path) -> Path:
    from vea_bench.datasets.synthetic import make_synthetic
    from vea_bench.models.teacher import TINY_TEACHER_ARCH, TINY_TEACHER_IMG_SIZE, TINY_TEACHER_KWARGS
    from vea_bench.models.tiny import make_tiny

    data = make_synthetic("fi", tmp / "data", per_class=12, size=32, seed=0)
    vlm = make_tiny("qwen2-vl", tmp / "tiny-qwen2-vl")
    kwargs = ", ".join(f"{k} = {json.dumps(v)}" for k, v in TINY_TEACHER_KWARGS.items())
    path = tmp / "experiment.toml"
    path.write_text(f"""
[experiment]
name = "html"
workdir = "{tmp / 'work'}"
device = "cpu"
threads = 1

[dataset]
name = "fi"
root = "{data}"
cache = "{tmp / 'cache' / 'fi.h5'}"

[teacher]
arch = "{TINY_TEACHER_ARCH}"
timm_kwargs = {{ {kwargs} }}
img_size = {TINY_TEACHER_IMG_SIZE}
random_init = true
epochs = 1
lr = 1e-3
batch_size = 16
workers = 0

[vlm]
model = "{vlm}"
dtype = "fp32"

[extract]
answer = ["generate", "score"]
batch_size = 8
workers = 0
max_new_tokens = 8

[distill]
epochs = 20
lr = 3e-3
batch_size = 32
seeds = [0, 1]

[gate]
names = ["concat", "dynamic"]
epochs = 3

[report]
formats = ["md"]
plots = true
""")
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("html-report")
    res = runner.invoke(app, ["run", str(_experiment(tmp))])
    assert res.exit_code == 0, res.output
    return tmp / "work"


def test_report_stage_writes_a_page_with_every_table_and_image(study: Path) -> None:
    page = study / "report" / "index.html"
    assert page.is_file()
    doc = _Collect()
    doc.feed(page.read_text(encoding="utf-8"))
    assert EXPECTED_TABLES <= set(doc.tables), doc.tables
    assert any(s.endswith("figure4-examples.png") for s in doc.images)
    assert any(s.endswith("reliability.png") for s in doc.images)
    assert any("confusion-" in s for s in doc.images) and any("figure1-complementarity" in s for s in doc.images)
    for src in doc.images:
        assert not src.startswith(("http:", "https:", "/")), src     # offline, relative to the page
        assert (page.parent / src).is_file(), src
    assert (page.parent / "figures" / "figure4-examples.pdf").is_file()
    # Every number's runs are one click away: each run link targets a provenance entry.
    runs = {ln[1:] for ln in doc.links if ln.startswith("#run-")}
    assert runs and runs <= doc.ids
    gates = [r for _, r in ResultsStore(study).scan()[0] if r.kind == "gate"]
    assert {f"run-{r.run_id}" for r in gates} <= doc.ids
    # Every cache-based run stored its test predictions; the DynamicWeighting gate its source weights.
    for _, r in ResultsStore(study).scan()[0]:
        if r.kind in ("gate", "distill", "vlm-eval", "baseline"):
            p = load_for(r, study)
            assert p is not None and len(p) == r.metrics["test"]["n"], r.run_id
            assert ("source_weights" in p.extra) == (r.kind == "gate" and r.config["gate"] == "dynamic")


def test_compare_on_two_pipeline_runs(study: Path) -> None:
    recs = [r for _, r in ResultsStore(study).scan()[0]]
    gate = next(r for r in recs if r.kind == "gate" and r.config["gate"] == "concat")
    vlm = next(r for r in recs if r.kind == "vlm-eval")
    res = runner.invoke(app, ["compare", gate.group, vlm.run_id, "-r", str(study)])
    assert res.exit_code == 0, res.output
    assert "difference A - B:" in res.output and "McNemar exact p =" in res.output
    assert "across 2 seed pairs" in res.output


def _chromium(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], cwd=cwd,
                              capture_output=True, text=True, timeout=180)


HARNESS = """<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="f" src="index.html" style="width:1280px;height:900px"></iframe>
<script>
document.getElementById('f').addEventListener('load', function () {
  var d = this.contentDocument;
  var imgs = Array.prototype.slice.call(d.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                   .map(function (i) { return i.getAttribute('src'); });
  var tables = Array.prototype.map.call(d.querySelectorAll('table[data-table]'),
                                         function (t) { return t.getAttribute('data-table'); });
  document.getElementById('result').textContent =
      'RESULT' + JSON.stringify({images: imgs.length, broken: broken, tables: tables}) + 'END';
});
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed "
                    "(`.ci/run` installs it with apt-get where apt is available)")
def test_chromium_renders_every_table_and_image(study: Path) -> None:
    report = study / "report"
    harness = report / "_harness.html"
    harness.write_text(HARNESS)
    try:
        res = _chromium(["--allow-file-access-from-files", "--virtual-time-budget=15000", "--dump-dom",
                         harness.as_uri()], report)
    finally:
        harness.unlink()
    assert "RESULT" in res.stdout, res.stderr[-2000:]
    got = json.loads(res.stdout.split("RESULT", 1)[1].split("END", 1)[0])
    doc = _Collect()
    doc.feed((report / "index.html").read_text(encoding="utf-8"))
    assert got["broken"] == [], got["broken"]
    assert got["images"] == len(doc.images) > 0
    assert EXPECTED_TABLES <= set(got["tables"])
    shot = report / "screenshot.png"
    res = _chromium(["--window-size=1280,2400", "--hide-scrollbars", f"--screenshot={shot}",
                     (report / "index.html").as_uri()], report)
    assert shot.is_file(), res.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        # A rendered page, not a blank one: many distinct colours.
        assert len(im.convert("RGB").resize((320, 600)).getcolors(1 << 16) or []) > 50


def test_paired_comparisons_are_tables_with_their_figure(study: Path) -> None:
    page = (study / "report" / "index.html").read_text(encoding="utf-8")
    doc = _Collect()
    doc.feed(page)
    cmp = [t for t in doc.tables if t.startswith("comparison-")]
    assert {"comparison-distill-head", "comparison-VLM-alone"} <= set(cmp), doc.tables
    assert any(s.endswith("comparisons.png") for s in doc.images)
    assert "difference A - B:" not in page          # numbers in table cells, not preformatted lines
    section = page.split('id="comparisons"', 1)[1].split("</section>", 1)[0]
    assert "<pre>" not in section and "McNemar p" in section and "across 2 seed pairs" in section


LAYOUT_HARNESS = """<!DOCTYPE html><html><body style="margin:0"><pre id="result">pending</pre>
<iframe id="f" src="index.html" style="width:1280px;height:900px;border:0"></iframe>
<script>
document.getElementById('f').addEventListener('load', function () {
  var w = this.contentWindow, d = this.contentDocument, vw = d.documentElement.clientWidth;
  Array.prototype.forEach.call(d.querySelectorAll('details'), function (e) { e.open = true; });
  function contained(el) {   // inside a box that scrolls (or clips) sideways and itself fits the viewport
    for (var a = el.parentElement; a && a !== d.body; a = a.parentElement) {
      var ox = w.getComputedStyle(a).overflowX;
      if (ox === 'auto' || ox === 'scroll' || ox === 'hidden') { return a.getBoundingClientRect().right <= vw + 0.5; }
    }
    return false;
  }
  var over = [];
  Array.prototype.forEach.call(d.body.querySelectorAll('*'), function (el) {
    var r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > vw + 0.5 || r.left < -0.5) && !contained(el)) {
      over.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + (el.className ? '.' + el.className : '') + ' right=' + Math.round(r.right));
    }
  });
  var wide = Array.prototype.filter.call(d.querySelectorAll('.scroll'), function (s) { return s.scrollWidth > s.clientWidth + 1; })
    .map(function (s) { var t = s.querySelector('table'); return t ? t.getAttribute('data-table') : ''; });
  var first = d.querySelector('table[data-table="1"] tbody td:first-child');
  var sticky = first ? w.getComputedStyle(first).position : null, pageWidth = d.documentElement.scrollWidth;
  // The check itself: with the scroll frames opened up, the wide tables stick out.
  Array.prototype.forEach.call(d.querySelectorAll('.scroll'), function (s) { s.style.overflowX = 'visible'; });
  var unframed = Array.prototype.filter.call(d.body.querySelectorAll('*'), function (el) {
    var r = el.getBoundingClientRect(); return r.width > 0 && r.right > vw + 0.5 && !contained(el); }).length;
  document.getElementById('result').textContent = 'RESULT' + JSON.stringify({viewport: vw,
    page_width: pageWidth, overflow: over.slice(0, 20), n_overflow: over.length, wide: wide,
    sticky: sticky, unframed: unframed}) + 'END';
});
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed "
                    "(`.ci/run` installs it with apt-get where apt is available)")
def test_no_element_overflows_a_1280px_viewport(study: Path) -> None:
    """Every provenance block opened, nothing sticks out of a laptop-wide window: wide tables
    scroll inside their frame with the row names pinned, long paths wrap."""
    report = study / "report"
    harness = report / "_layout.html"
    harness.write_text(LAYOUT_HARNESS)
    try:
        res = _chromium(["--allow-file-access-from-files", "--window-size=1400,1000", "--virtual-time-budget=15000",
                         "--dump-dom", harness.as_uri()], report)
    finally:
        harness.unlink()
    assert "RESULT" in res.stdout, res.stderr[-2000:]
    got = json.loads(res.stdout.split("RESULT", 1)[1].split("END", 1)[0])
    assert 1200 <= got["viewport"] <= 1280, got
    assert got["n_overflow"] == 0, got["overflow"]
    assert got["page_width"] <= got["viewport"], got
    assert got["sticky"] == "sticky"
    assert "1" in got["wide"] and got["unframed"] > 0, got   # Table 1 is wider than the window: it scrolls inside
