"""Reporting: the paper's tables and figures from run records, and parameter counts from architectures.

- `vea_bench.report.tables`: `load_results`, `build_tables`: Tables 1-4 + extensions as a `report.table_model.Table`.
- `vea_bench.report.selection`: which records fill a cell (`Select`, `latest_group`, `aggregate` over seeds).
- `vea_bench.report.formats`: `render` and the registered table formats (rich, md, latex, csv, json-leaderboard).
- `vea_bench.report.plots`: `render_plots` (Figure 1, Figure 3, confusion matrices).
- `vea_bench.report.params`: `param_report`, `distill_head_params`, `gate_params`, `teacher_params`, `vlm_counts`.
- `vea_bench.report.paper`: the paper's published numbers (bundled `data/paper_results.json`).
- `vea_bench.report.stats`: bootstrap intervals, paired bootstrap, McNemar, seed t interval, Holm, ECE.
- `vea_bench.report.compare`: `vea-bench compare` and the tables' intervals and significance marks.
- `vea_bench.report.examples`: Figure 4 and per-class / per-attribute accuracy from the dataset root.
- `vea_bench.report.html`: `build_report`, the static HTML page (`vea-bench report`).

Submodules import matplotlib / torch lazily, so importing this package is cheap.
"""
