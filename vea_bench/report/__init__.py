"""Reporting: the paper's tables and figures from run records, and parameter counts from architectures.

- `vea_bench.report.tables`: `load_results`, `build_tables`, `render` (rich / md / latex / csv), Tables 1-4 + extensions.
- `vea_bench.report.plots`: `render_plots` (Figure 1, Figure 3, confusion matrices).
- `vea_bench.report.params`: `param_report`, `distill_head_params`, `gate_params`, `teacher_params`, `vlm_counts`.
- `vea_bench.report.paper`: the paper's published numbers (bundled `data/paper_results.json`).

Submodules import matplotlib / torch lazily, so importing this package is cheap.
"""
