"""Quiet output: third-party notices that say nothing about the run are hidden unless --verbose."""
from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from vea_bench_cli.common import THIRD_PARTY_NOTICES, quiet_third_party
from vea_bench_cli.main import app

NOTICE = ("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. "
          "Please make sure you already `pip install kernels` and the kernels >= 0.11.1")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def bnb_log():
    name = THIRD_PARTY_NOTICES[0][0]
    logger = logging.getLogger(name)
    handler = _Collect()
    logger.addHandler(handler)
    yield logger, handler.messages
    logger.removeHandler(handler)
    quiet_third_party(verbose=True)  # leave no filter behind for other tests


@pytest.mark.parametrize("verbose", [False, True])
def test_bitsandbytes_kernels_notice_only_with_verbose(verbose: bool, bnb_log) -> None:
    logger, seen = bnb_log
    args = (["--verbose"] if verbose else []) + ["models", "list"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    logger.warning(NOTICE)
    logger.warning("a real bitsandbytes problem")
    assert seen == ([NOTICE] if verbose else []) + ["a real bitsandbytes problem"]
