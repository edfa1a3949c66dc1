"""The thin Typer front end of vea-bench (installed as `vea_bench_cli`). It imports the library, never the reverse."""
