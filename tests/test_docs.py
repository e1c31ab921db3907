"""The README's generated reference sections match the code, and its commands exist."""

from __future__ import annotations

import re
import subprocess
import sys

from typer.main import get_command

from medseg.cli import app
from tests.conftest import REPO_ROOT


def test_cli_and_config_reference_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "reference_docs.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_every_command_in_the_readme_table_exists() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("## Commands", 1)[1].split("\n\n", 2)[1]
    named = set(re.findall(r"^\| `medseg ([a-z][a-z-]*(?: [a-z]+)?)", table, flags=re.MULTILINE))
    cli = get_command(app)
    known = set(cli.commands)  # type: ignore[attr-defined]
    known |= {f"pacs {c}" for c in cli.commands["pacs"].commands}  # type: ignore[attr-defined]
    missing = {n for n in named if n.split(" ")[0] not in known and n not in known}
    assert missing == set(), missing
    assert known - {"pacs"} <= {n for n in named} | {n.split(" ")[0] for n in named}
