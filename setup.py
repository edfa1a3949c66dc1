"""Package discovery only: the library's packages plus ./cli installed under the name `vea_bench_cli`.

Everything else lives in pyproject.toml. A setup.py is needed because the `cli/` folder must not
install as a bare top-level module named `cli`, and setuptools' declarative `find` cannot rename.
"""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["vea_bench", "vea_bench.*"]) + ["vea_bench_cli"])
