"""Inventory of DICOM folder trees and series selection, on pydicom's and the shared real data."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medseg.config import SeriesSelection, load_config, parse_config
from medseg.errors import ConfigError, InputError, UnreadableScanError
from medseg.geometry import Geometry
from medseg.io.dicom import (
    Inventory,
    Orientation,
    ProblemKind,
    SeriesEntry,
    SeriesKind,
    StudyEntry,
    load_series,
    scan_folder,
    select_series,
    write_series,
)
from medseg.io.dicom._discovery import _iter_files
from medseg.volume import Volume
from tests.conftest import REPO_ROOT, require_data

PYDICOM_FILES = Path(get_testdata_file("CT_small.dcm")).parent


def test_dicomdir_tree_with_several_studies() -> None:
    """pydicom's DICOMDIR test tree: 7 studies, CT/MR/CR series, scouts, subsets with gaps."""
    root = PYDICOM_FILES / "dicomdirtests"
    inventory = scan_folder(root)
    assert inventory.problems == ()
    assert len(inventory.studies) == 7
    dicomdirs = [p for p in root.rglob("*") if p.is_file() and "DICOMDIR" in p.name]
    assert inventory.n_dicom_files < inventory.n_files - len(dicomdirs) + 1  # DICOMDIRs skipped
    by_description = {s.series_description: s for s in inventory.series}
    smart = by_description["SmartScore - Gated 0.5 sec"]
    assert (smart.kind, smart.orientation, smart.n_slices) == (
        SeriesKind.VOLUME,
        Orientation.AXIAL,
        5,
    )
    assert smart.pixel_spacing_mm == pytest.approx((0.488281, 0.488281))
    assert smart.slice_spacing_mm == pytest.approx(2.5)
    assert smart.problems == ()
    scout = by_description["Scout"]
    assert scout.is_localizer and scout.orientation is Orientation.MIXED
    assert [p.kind for p in scout.problems] == [ProblemKind.MIXED_ORIENTATION]
    brain = by_description["Routine Brain"]  # 4 slices of a longer series: a gap is named
    assert [p.kind for p in brain.problems] == [ProblemKind.MISSING_SLICES]
    assert "77654033/CT2/17106" in brain.problems[0].message
    assert by_description["Cervical LAT"].kind is SeriesKind.IMAGE
    assert by_description["FAST LOCALIZER"].orientation is Orientation.SAGITTAL
    header_only = [s for s in inventory.series if s.series_description is None]
    assert header_only[0].problems[0].kind is ProblemKind.MISSING_GEOMETRY
    assert len(header_only[0].problems[0].files) == 50


def test_mixed_folder_lists_every_object_and_problem(tmp_path: Path) -> None:
    lung = require_data("lung-gtv-ct/pat_1")
    shutil.copytree(lung, tmp_path / "a" / "b" / "lung")
    for name in ("rtplan.dcm", "rtdose.dcm", "reportsi.dcm", "MR_small.dcm"):
        shutil.copy(PYDICOM_FILES / name, tmp_path / name)
    (tmp_path / "README").write_text("not dicom")
    broken = tmp_path / "a" / "broken"  # pydicom parses a cut header without complaint
    broken.write_bytes((lung / "DCM_IMG_00000.dcm").read_bytes()[:700])
    inventory = scan_folder(tmp_path)
    assert [p.kind for p in inventory.problems] == [ProblemKind.UNREADABLE]
    assert inventory.problems[0].files == ("a/broken",)
    kinds = {s.modality: s.kind for s in inventory.series}
    assert kinds == {
        "CT": SeriesKind.VOLUME,
        "RTSTRUCT": SeriesKind.NON_IMAGE,
        "RTPLAN": SeriesKind.NON_IMAGE,
        "RTDOSE": SeriesKind.NON_IMAGE,
        "SR": SeriesKind.NON_IMAGE,
        "MR": SeriesKind.VOLUME,
    }
    ct = next(s for s in inventory.series if s.modality == "CT")
    assert ct.n_slices == 60 and ct.problems == () and ct.orientation is Orientation.AXIAL
    assert ct.slice_spacing_mm == pytest.approx(3.0)
    rtstruct = next(s for s in inventory.series if s.modality == "RTSTRUCT")
    assert rtstruct.sop_class_name == "RT Structure Set Storage"
    # a broken file stops loading; it is named
    from medseg.io.dicom import load_series

    with pytest.raises(
        UnreadableScanError, match=r"a/broken: truncated DICOM file: element \(0020,000D\)"
    ):
        load_series(tmp_path)


def test_inventory_is_json_and_free_of_patient_identifiers(tmp_path: Path) -> None:
    folder = require_data("lung-gtv-ct/pat_2")
    for p in sorted(folder.glob("DCM_IMG_*"))[:3]:
        ds = pydicom.dcmread(p)
        ds.PatientName = "DOE^JANE"
        ds.PatientID = "PID-4711"
        ds.PatientBirthDate = "19540321"
        ds.save_as(tmp_path / p.name)
    text = json.dumps(scan_folder(tmp_path).to_dict())
    for secret in ("DOE", "JANE", "PID-4711", "19540321", str(tmp_path)):
        assert secret not in text
    again = json.loads(text)
    assert again["studies"][0]["series"][0]["n_slices"] == 3


@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        pytest.param((0, 0, 1, 0, 1, 0, 1, 0, 0), Orientation.AXIAL, id="axial"),
        pytest.param((1, 0, 0, 0, 0, 1, 0, -1, 0), Orientation.SAGITTAL, id="sagittal"),
        pytest.param((0, 0, 1, 0, -1, 0, 1, 0, 0), Orientation.AXIAL, id="axial-flipped-rows"),
        pytest.param((0, 0, 1, 1, 0, 0, 0, -1, 0), Orientation.CORONAL, id="coronal"),
        pytest.param((0, 0.6, 0.8, 0, 0.8, -0.6, 1, 0, 0), Orientation.OBLIQUE, id="oblique"),
    ],
)
def test_orientation_is_classified(
    tmp_path: Path, direction: tuple[float, ...], expected: Orientation
) -> None:
    g = Geometry((3, 4, 5), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(float(v) for v in direction))
    write_series(Volume(np.zeros(g.shape, np.int16), g), tmp_path / "s")
    (series,) = scan_folder(tmp_path).series
    assert series.orientation is expected
    assert series.slice_spacing_mm == pytest.approx(2.0)


def test_real_quirky_series_are_clean_in_the_inventory() -> None:
    for relative in ("dicom-quirks/rtutils-oriented", "dicom-quirks/torchio-dicom", "hn-ct/pt_1"):
        inventory = scan_folder(require_data(relative))
        volumes = [s for s in inventory.series if s.kind is SeriesKind.VOLUME]
        assert len(volumes) == 1 and volumes[0].problems == (), relative


def test_scan_refuses_a_file_path(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(UnreadableScanError, match="not a directory"):
        scan_folder(tmp_path / "x")


# --- selection rules (exact, hand-made inventories) ------------------------------------------

_BASE = SeriesEntry(
    series_instance_uid="1.2.3",
    study_instance_uid="1.2",
    frame_of_reference_uid=None,
    modality="CT",
    series_description="CHEST",
    series_number=1,
    sop_class_uid=None,
    sop_class_name="CT Image Storage",
    kind=SeriesKind.VOLUME,
    n_files=100,
    n_slices=100,
    rows=512,
    columns=512,
    orientation=Orientation.AXIAL,
    pixel_spacing_mm=(0.8, 0.8),
    slice_spacing_mm=3.0,
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    is_localizer=False,
    transfer_syntaxes=(),
    problems=(),
)


def _inventory(*series: SeriesEntry) -> Inventory:
    return Inventory(Path("/scans/case"), (StudyEntry("1.2", None, series),), (), 0, 0)


def _series(uid: str, **changes: object) -> SeriesEntry:
    return dataclasses.replace(_BASE, series_instance_uid=uid, **changes)  # type: ignore[arg-type]


THICK = _series(
    "1.1", series_description="CHEST 3mm", slice_spacing_mm=3.0, n_slices=100, series_number=2
)
THIN = _series(
    "1.2", series_description="CHEST 1mm", slice_spacing_mm=1.0, n_slices=250, series_number=3
)
SHORT_THIN = _series(
    "1.3", series_description="CHEST 1mm recon", slice_spacing_mm=1.0, n_slices=80, series_number=4
)
SCOUT = _series(
    "1.4",
    series_description="Topogram",
    n_slices=1,
    is_localizer=True,
    series_number=1,
    image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
)
MR = _series("1.5", modality="MR", series_description="T1 axial", n_slices=150, series_number=5)
RTSTRUCT = _series(
    "1.6",
    modality="RTSTRUCT",
    kind=SeriesKind.NON_IMAGE,
    n_slices=1,
    series_description="contours",
    sop_class_name="RT Structure Set Storage",
)
ALL = (THICK, THIN, SHORT_THIN, SCOUT, MR, RTSTRUCT)


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        pytest.param({"modalities": ("MR",)}, MR, id="modality"),
        pytest.param({"modalities": ("CT",), "min_slices": 200}, THIN, id="min-slices"),
        pytest.param(
            {"modalities": ("CT",), "include_description": "3mm"}, THICK, id="include-regex"
        ),
        pytest.param(
            {"modalities": ("CT",), "exclude_description": "1mm"}, THICK, id="exclude-regex"
        ),
        pytest.param({"modalities": ("CT",), "prefer": "most_slices"}, THIN, id="most-slices"),
        pytest.param(
            {"modalities": ("CT",), "prefer": "thinnest", "require": "first"},
            THIN,
            id="thinnest-first",
        ),
        pytest.param(
            {
                "modalities": ("CT",),
                "min_slices": 1,
                "exclude_localizers": False,
                "include_description": "(?i)topo",
            },
            SCOUT,
            id="localizer-allowed",
        ),
    ],
)
def test_selection_rules(rules: dict[str, object], expected: SeriesEntry) -> None:
    assert select_series(_inventory(*ALL), SeriesSelection(**rules)) == expected  # type: ignore[arg-type]


def test_a_localizer_and_an_rtstruct_never_compete_with_the_one_series() -> None:
    assert select_series(_inventory(SCOUT, THICK, RTSTRUCT)) == THICK


def test_tied_preference_with_exactly_one_lists_the_tied_series() -> None:
    with pytest.raises(
        InputError, match="2 series match the selection rules equally good by prefer=thinnest"
    ) as info:
        select_series(_inventory(*ALL), SeriesSelection(modalities=("CT",), prefer="thinnest"))
    assert "1.2 (CT, series 3, 250 slices)" in str(info.value)
    assert "1.3 (CT, series 4, 80 slices)" in str(info.value)
    assert "1.1 " not in str(info.value)
    assert "CHEST" not in str(info.value)  # SeriesDescription is identifying (log_identifiers)


def test_no_match_lists_every_series_with_its_reason() -> None:
    with pytest.raises(InputError, match="/scans/case: no series matches") as info:
        select_series(_inventory(*ALL), SeriesSelection(modalities=("CT",), min_slices=300))
    message = str(info.value)
    assert "1.2 (CT, series 3, 250 slices): 250 slices < min_slices 300" in message
    assert "1.4 (CT, series 1, 1 slices, localizer): 1 slices < min_slices 300" in message
    assert "1.5 (MR, series 5, 150 slices): modality MR not in ['CT']" in message
    assert (
        "1.6 (RTSTRUCT, series 1, 1 objects): not a CT/MR image volume (RT Structure Set Storage)"
        in message
    )


def test_empty_inventory_says_so() -> None:
    with pytest.raises(InputError, match="no DICOM series at all"):
        select_series(_inventory())


@pytest.mark.parametrize(
    ("yaml_section", "message"),
    [
        pytest.param(
            "{include_description: '(unclosed'}",
            "series_selection.include_description: not a valid regular expression",
            id="bad-regex",
        ),
        pytest.param(
            "{modalities: []}",
            "series_selection.modalities: modalities must be non-empty",
            id="no-modality",
        ),
        pytest.param("{modalities: [PET]}", "series_selection.modalities.0", id="unknown-modality"),
        pytest.param("{prefer: thickest}", "series_selection.prefer", id="unknown-preference"),
        pytest.param("{min_slice: 3}", "series_selection.min_slice: unknown key", id="typo"),
        pytest.param(
            "{exclude_localizers: 'yes'}", "series_selection.exclude_localizers", id="not-a-bool"
        ),
    ],
)
def test_bad_selection_config_is_named(yaml_section: str, message: str) -> None:
    text = (
        REPO_ROOT / "configs" / "tiny.yaml"
    ).read_text() + f"\nseries_selection: {yaml_section}\n"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config(text, source="tiny.yaml")


def test_existing_configs_get_the_default_selection() -> None:
    config = load_config(REPO_ROOT / "configs" / "tiny.yaml")
    assert config.series_selection == SeriesSelection()
    assert parse_config(config.to_yaml()) == config


def test_inspect_command_prints_the_inventory_as_table_and_json(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medseg.cli import app

    shutil.copytree(require_data("lung-gtv-ct/pat_3"), tmp_path / "lung")
    shutil.copy(PYDICOM_FILES / "rtplan.dcm", tmp_path / "rtplan.dcm")
    inventory = scan_folder(tmp_path)
    runner = CliRunner()
    table = runner.invoke(app, ["inspect", str(tmp_path)])
    assert table.exit_code == 0, table.output
    ct = next(s for s in inventory.series if s.modality == "CT")
    assert f"{ct.series_instance_uid} (CT," in table.output and " axial " in table.output
    assert "RTPLAN" in table.output and "RTSTRUCT" in table.output
    as_json = runner.invoke(app, ["inspect", str(tmp_path), "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.output) == json.loads(json.dumps(inventory.to_dict()))


# --- folder walk: symbolic links --------------------------------------------------------------


def _small_series(folder: Path, n: int = 3) -> Volume:
    g = Geometry((n, 4, 4), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    return write_series(Volume(np.zeros(g.shape, np.int16), g), folder)


def test_series_behind_a_folder_link_is_found_under_the_link(tmp_path: Path) -> None:
    """``medseg inspect PATH`` and ``medseg batch`` walk through scan_folder: a series whose
    folder is a symbolic link was skipped ("0 cases")."""
    written = _small_series(tmp_path / "store" / "ct")
    root = tmp_path / "root"
    (root / "patient").mkdir(parents=True)
    (root / "patient" / "ct").symlink_to(tmp_path / "store" / "ct", target_is_directory=True)
    inventory = scan_folder(root)
    assert inventory.problems == ()
    (series,) = inventory.series
    assert series.series_instance_uid == written.source.series_instance_uid
    assert series.n_slices == 3 and series.problems == ()
    # paths as seen under the root, not resolved
    assert all(p.parent == root / "patient" / "ct" for p in series.files)
    volume = load_series(root)
    assert volume.geometry.shape == (3, 4, 4)


def test_a_loop_of_folder_links_ends_and_lists_each_file_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _small_series(root / "a" / "ct")
    (root / "a" / "ct" / "up").symlink_to(root, target_is_directory=True)  # a loop to the root
    (root / "a" / "self").symlink_to(root / "a", target_is_directory=True)
    (root / "b").symlink_to(root / "a", target_is_directory=True)  # the same folder twice
    inventory = scan_folder(root)
    assert inventory.problems == ()
    (series,) = inventory.series
    assert series.n_files == 3
    assert inventory.n_files == 3
    assert all(p.relative_to(root).parts[:2] == ("a", "ct") for p in series.files)


def test_a_file_reached_by_two_paths_is_listed_once_at_the_first(tmp_path: Path) -> None:
    written = _small_series(tmp_path / "ct", n=2)
    first = min((tmp_path / "ct").iterdir())
    (tmp_path / "ct" / "zz_link.dcm").symlink_to(first)
    (tmp_path / "ct" / "00_link.dcm").symlink_to(first)  # sorts before its target
    inventory = scan_folder(tmp_path)
    (series,) = inventory.series
    assert series.series_instance_uid == written.source.series_instance_uid
    assert inventory.n_files == 2 and series.n_files == 2
    assert tmp_path / "ct" / "00_link.dcm" in series.files


def test_a_broken_link_is_a_problem(tmp_path: Path) -> None:
    _small_series(tmp_path / "ct")
    (tmp_path / "ct" / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    (tmp_path / "ct" / "knot").symlink_to(tmp_path / "ct" / "knot")  # a link to itself
    inventory = scan_folder(tmp_path)
    assert [(p.kind, p.files) for p in inventory.problems] == [
        (ProblemKind.UNREADABLE, ("ct/gone.dcm",)),
        (ProblemKind.UNREADABLE, ("ct/knot",)),
    ]
    assert "symbolic link to nothing" in inventory.problems[0].message
    assert inventory.series[0].n_slices == 3
    with pytest.raises(UnreadableScanError, match="ct/gone.dcm: symbolic link to nothing"):
        load_series(tmp_path)


def test_walk_order_is_rglob_order_without_links(tmp_path: Path) -> None:
    names = ["a/z", "a.dcm", "a-b/c", "A/x", "b/a/b/c", "b/a.x", "DICOMDIR", "c/dicomdir", "c/d"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)  # different contents: different files
    expected = [
        p for p in sorted(tmp_path.rglob("*")) if p.is_file() and p.name.upper() != "DICOMDIR"
    ]
    assert list(_iter_files(tmp_path)) == expected
