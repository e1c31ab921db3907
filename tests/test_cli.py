"""The command line's logging: medseg's progress shown, other libraries' chatter not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_EMIT = """
import logging, sys
from medseg.cli import _configure_logging
_configure_logging(sys.argv[1] == "verbose")
logging.getLogger("highdicom.spatial").info("THIRD-PARTY-INFO")
logging.getLogger("highdicom.spatial").warning("THIRD-PARTY-WARNING")
logging.getLogger("medseg.batch").info("MEDSEG-INFO")
logging.getLogger("medseg.batch").debug("MEDSEG-DEBUG")
import mlflow  # configures its own loggers on import
logging.getLogger("mlflow.store").info("MLFLOW-INFO")
"""


@pytest.mark.parametrize(
    ("mode", "shown", "hidden"),
    [
        (
            "plain",
            {"THIRD-PARTY-WARNING", "MEDSEG-INFO"},
            {"THIRD-PARTY-INFO", "MEDSEG-DEBUG", "MLFLOW-INFO"},
        ),
        (
            "verbose",
            {
                "THIRD-PARTY-INFO",
                "THIRD-PARTY-WARNING",
                "MEDSEG-INFO",
                "MEDSEG-DEBUG",
                "MLFLOW-INFO",
            },
            set(),
        ),
    ],
    ids=["plain", "verbose"],
)
def test_log_levels(mode: str, shown: set[str], hidden: set[str]) -> None:
    # a fresh interpreter: the CLI configures the root logger once per process
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    out = subprocess.run(
        [sys.executable, "-c", _EMIT, mode], capture_output=True, text=True, check=True, env=env
    )
    printed = {word for word in shown | hidden if word in out.stderr}
    assert printed == shown, out.stderr
