"""Output names made from DICOM attributes stay inside their output folder.

ROI names and series descriptions come from whoever wrote the DICOM files. A name such as
``../../etc``, ``a/b``, a NUL or 300 characters must neither escape the output folder nor
break the write: :func:`medseg.privacy.safe_filename` is the one place that makes file names
from such text, and ``medseg convert`` and ``medseg batch`` are run on real CTs whose
attributes carry them.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from pathlib import Path

import pydicom
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydicom.config import disable_value_validation
from typer.testing import CliRunner

from medseg.cli import app
from medseg.config import load_config
from medseg.model import build_network, save_checkpoint
from medseg.privacy import MAX_FILENAME_LENGTH, safe_filename, unique_filenames
from tests.conftest import require_data

REPO = Path(__file__).resolve().parents[1]
SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
HOSTILE = (
    "../../etc",
    "a/b",
    "..",
    ".",
    "x\x00y",
    "G" * 300,
    "CON",
    ".hidden",
    "-rf",
    "GTV 1",
    "GTV/1",
    "C:\\Windows\\system32",
    "line\nbreak",
    "Lungenflügel",
)


@given(st.text(max_size=400))
def test_safe_filename_is_one_plain_component(text: str) -> None:
    name = safe_filename(text)
    assert SAFE.match(name), name
    assert len(name) <= MAX_FILENAME_LENGTH
    assert name not in (".", "..") and "/" not in name and "\x00" not in name
    root = Path("/out/masks")
    assert (root / name).parent == root
    assert os.path.normpath(root / name).startswith(str(root) + "/")


@given(st.lists(st.text(max_size=120), max_size=12))
def test_unique_filenames_are_distinct_ignoring_case(texts: list[str]) -> None:
    names = unique_filenames(texts)
    assert len(names) == len(texts)
    assert len({n.lower() for n in names}) == len(names)
    assert all(SAFE.match(n) for n in names)


def test_hostile_names_can_be_written(tmp_path: Path) -> None:
    """Every name is a file the file system accepts, inside the folder, none hidden."""
    names = unique_filenames(HOSTILE)
    for name in names:
        (tmp_path / f"{name}.nii.gz").write_bytes(b"")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.nii.gz" for n in names)
    assert safe_filename("G" * 300) != safe_filename("G" * 299 + "H")  # cut, still distinct
    assert safe_filename("../../etc") == "etc"
    assert safe_filename("CON") == "CON_"


def _with_roi_names(source: Path, folder: Path, names: tuple[str, ...]) -> Path:
    """A copy of ``source`` (CT + RT-STRUCT with one ROI) whose structure set holds the first
    ROI once per name in ``names``; returns the RT-STRUCT."""
    folder.mkdir(parents=True)
    for path in source.iterdir():
        if "_RS_" not in path.name:
            (folder / path.name).symlink_to(path)
    rs_path = next(source.glob("*_RS_*"))
    ds = pydicom.dcmread(rs_path)
    roi, contour = ds.StructureSetROISequence[0], ds.ROIContourSequence[0]
    rois, contours = [], []
    for number, name in enumerate(names, start=1):
        new_roi, new_contour = copy.deepcopy(roi), copy.deepcopy(contour)
        new_roi.ROINumber = new_contour.ReferencedROINumber = number
        new_roi.ROIName = name
        rois.append(new_roi)
        contours.append(new_contour)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    if "RTROIObservationsSequence" in ds:
        del ds.RTROIObservationsSequence
    out = folder / rs_path.name
    with disable_value_validation():  # writing what a careless exporter could write
        ds.save_as(out, enforce_file_format=True)
    return out


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_convert_keeps_hostile_roi_names_inside_the_output(tmp_path: Path) -> None:
    names = tuple(n for n in HOSTILE if n not in (".", "line\nbreak"))
    rtstruct = _with_roi_names(require_data("lung-gtv-ct/pat_2"), tmp_path / "ct", names)
    before = _tree(tmp_path)
    result = CliRunner().invoke(
        app, ["convert", str(tmp_path / "ct"), str(tmp_path / "out"), "--rtstruct", str(rtstruct)]
    )
    assert result.exit_code == 0, result.output
    created = _tree(tmp_path) - before
    assert all(c == "out" or c.startswith("out/") for c in created), created
    masks = sorted((tmp_path / "out" / "masks").iterdir())
    assert len(masks) == len(names)  # one file per ROI, none overwritten by another
    for mask in masks:
        assert SAFE.match(mask.name) and mask.name.endswith(".nii.gz"), mask.name
        assert mask.resolve().parent == (tmp_path / "out" / "masks").resolve()


def test_batch_with_hostile_descriptions_writes_inside_its_output(tmp_path: Path) -> None:
    """SeriesDescription and StudyDescription ``../../etc``-like: the batch's files all lie
    under OUTPUT_ROOT (case folders are named by case id), and the QA page escapes them."""
    source = require_data("lung-gtv-ct/pat_2")
    inputs = tmp_path / "in" / "study"
    inputs.mkdir(parents=True)
    for path in source.iterdir():
        if "_RS_" in path.name:
            continue
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = "../../etc"
        ds.StudyDescription = "../../../<script>x"
        ds.save_as(inputs / path.name, enforce_file_format=True)
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["infer"].update({"roi_size": [48, 96, 96], "overlap": 0.0})
    raw["postprocess"] = {"default": {"min_component_volume_ml": 1.0e6}}  # untrained: no contours
    raw["export"] = {"empty_rois": "keep"}  # so an RT-STRUCT (with the empty ROI) is written
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "run.yaml")
    model = save_checkpoint(tmp_path / "model.pt", build_network(config.model), config)
    before = _tree(tmp_path)
    result = CliRunner().invoke(
        app, ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(model)]
    )
    assert result.exit_code == 0, result.output
    created = _tree(tmp_path) - before
    assert created and all(c == "out" or c.startswith("out/") for c in created), created
    assert not any(part in ("..", "etc") for c in created for part in c.split("/"))
    (report,) = (tmp_path / "out" / "cases").glob("case-*/report/report.html")
    page = report.read_text()
    # SeriesDescription is identifying (privacy.log_identifiers is off): withheld, not shown
    assert "../../etc" not in page and "Series description: withheld" in page
    assert "<script>" not in page


def test_safe_filename_matches_the_file_systems_limit() -> None:
    """The longest name plus the longest suffix medseg adds fits a 255-byte file name."""
    with tempfile.TemporaryDirectory() as folder:
        name = unique_filenames(["x" * 1000, "x" * 1000])[1] + ".nii.gz"
        (Path(folder) / name).write_bytes(b"")
        assert len(name.encode()) <= 255
