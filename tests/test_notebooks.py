"""Notebooks are committed without outputs and run top to bottom in a real Jupyter kernel."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import require_data

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_has_no_outputs_and_runs(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = json.loads(path.read_text())
    code = [c for c in raw["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), "strip outputs"
    notebook = nbformat.reads(path.read_text(), as_version=4)
    nbformat.validate(notebook)
    # ipykernel's native "python3" kernel is this interpreter (the project's venv); the
    # notebook runs in a scratch folder with a non-interactive matplotlib backend
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    monkeypatch.setenv("MPLBACKEND", "agg")
    if "dicom_rtstruct" in path.name:  # real clinical data: the lung GTV set
        monkeypatch.setenv("MEDSEG_TEST_DATA", str(require_data("lung-gtv-ct").parent))
    client.execute()  # raises CellExecutionError naming the cell and the traceback
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
