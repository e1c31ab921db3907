"""Per-structure tolerances (medseg.tolerances) and expert agreement in ``medseg evaluate``.

The shipped H&N table is recomputed from the two experts' contours of ``hn-oar-labels`` by the
method its docstring states, so a number edited by hand, or a change in the metric definitions
that moves it, fails here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import ConfigError, InputError
from medseg.evaluation import evaluate_folder
from medseg.geometry import Geometry
from medseg.io import nifti
from medseg.metrics import compute_metrics
from medseg.tolerances import (
    HN_OAR_SOURCE,
    HN_OAR_TOLERANCES_MM,
    Tolerance,
    derive_tolerances,
    load_tolerances,
    resolve_tolerances,
    tolerances_from_hd95,
)
from medseg.volume import Volume, VolumeKind
from tests.conftest import require_data
from tests.referees.hn_pairs import inter_observer_pairs


def test_the_shipped_hn_table_is_the_median_inter_observer_hd95_of_the_data() -> None:
    """The table is what derive_tolerances (scripts/derive_tolerances.py) computes: medseg's
    HD95 of every non-empty pair (read once per test process and cropped around the pair,
    which changes no distance: tests/referees/hn_pairs.py), medians by tolerances_from_hd95."""
    root = require_data("hn-oar-labels")
    hd95 = [
        (
            pair.organ,
            compute_metrics(pair.prediction, pair.reference, tolerance_mm=0.0).hausdorff95_mm,
        )
        for scan in sorted(p.name for p in (root / "oncologist").iterdir() if p.is_dir())
        for pair in inter_observer_pairs(scan)
        if pair.both_present
    ]
    table, pairs = tolerances_from_hd95(hd95)
    assert table == dict(HN_OAR_TOLERANCES_MM)
    assert len(table) == 21
    assert min(pairs.values()) >= 7  # every organ on most of the 7 scans (sides pooled: 14)
    # sanity against anatomy: a lens or a lung edge is contoured within about a pixel, a
    # parotid (soft, low-contrast borders) within several millimetres
    assert table["Lens_L"] < 1.5 and table["Lung_L"] < 1.5
    assert table["Parotid_L"] > 3 * table["Lens_L"]


def test_derive_tolerances_reads_both_experts_folders(tmp_path: Path) -> None:
    """derive_tolerances on a folder laid out as hn-oar-labels: per organ (sides pooled) the
    median of the pairs' HD95, a pair with an empty side or one expert's file missing left
    out."""
    grid = Geometry(shape=(8, 16, 16), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0))
    boxes = {  # (scan, organ): (oncologist's box start, radiographer's shift along columns)
        ("s1", "Parotid-Lt"): 1, ("s1", "Parotid-Rt"): 2, ("s2", "Parotid-Lt"): 4,
        ("s1", "Lens-Lt"): 0, ("s2", "Lens-Lt"): 3,
    }  # fmt: skip
    expected: list[tuple[str, float]] = []
    for (scan, organ), shift in boxes.items():
        ref = np.zeros(grid.shape, np.uint8)
        ref[2:6, 4:10, 4:10] = 1
        pred = np.roll(ref, shift, axis=2)
        for who, array in (("oncologist", ref), ("radiographer", pred)):
            folder = tmp_path / who / scan / "segmentations"
            folder.mkdir(parents=True, exist_ok=True)
            nifti.save(Volume(array, grid, VolumeKind.LABELS), folder / f"{organ}.nrrd")
        m = compute_metrics(
            Volume(pred, grid, VolumeKind.LABELS), Volume(ref, grid, VolumeKind.LABELS),
            tolerance_mm=0.0,
        )  # fmt: skip
        expected.append((organ, m.hausdorff95_mm))
    empty = tmp_path / "radiographer" / "s2" / "segmentations"
    nifti.save(
        Volume(np.zeros(grid.shape, np.uint8), grid, VolumeKind.LABELS), empty / "Brain.nrrd"
    )
    nifti.save(Volume(np.ones(grid.shape, np.uint8), grid, VolumeKind.LABELS),
               tmp_path / "oncologist" / "s2" / "segmentations" / "Brain.nrrd")  # fmt: skip
    only_one = tmp_path / "oncologist" / "s1" / "segmentations" / "Mandible.nrrd"
    nifti.save(Volume(np.ones(grid.shape, np.uint8), grid, VolumeKind.LABELS), only_one)
    table, pairs = derive_tolerances(tmp_path)
    assert (table, pairs) == tolerances_from_hd95(expected)
    assert set(table) == {"Parotid_L", "Parotid_R", "Lens_L"}
    assert pairs == {"Parotid_L": 3, "Parotid_R": 3, "Lens_L": 2}
    assert table["Parotid_L"] == table["Parotid_R"] == 2.0  # median of shifts 1, 2, 4 mm


def test_resolution_order_file_name_then_tg263_then_builtin_then_default() -> None:
    table = {"Parotid-Lt": 4.0, "SpinalCord": 1.5, "GTV": 3.0}
    resolved = resolve_tolerances(
        ["Parotid-Lt", "Spinal Cord", "Lens-Rt", "GTV", "Bladder"],
        2.0,
        table,
        table_source="file t.yaml",
    )
    assert resolved == {
        "Parotid-Lt": Tolerance(4.0, "file t.yaml"),  # by name
        "Spinal Cord": Tolerance(1.5, "file t.yaml"),  # by TG-263 name SpinalCord
        "Lens-Rt": Tolerance(HN_OAR_TOLERANCES_MM["Lens_R"], HN_OAR_SOURCE),
        "GTV": Tolerance(3.0, "file t.yaml"),
        "Bladder": Tolerance(2.0, "--tolerance-mm"),
    }
    plain = resolve_tolerances(["Lens-Rt"], 2.0, None, builtin=False)
    assert plain["Lens-Rt"] == Tolerance(2.0, "--tolerance-mm")


def test_tolerance_files_yaml_and_csv_and_their_errors(tmp_path: Path) -> None:
    good_yaml = tmp_path / "t.yaml"
    good_yaml.write_text("Parotid-Lt: 2.85\nLens: 1\n")
    assert load_tolerances(good_yaml) == {"Parotid-Lt": 2.85, "Lens": 1.0}
    good_csv = tmp_path / "t.csv"
    good_csv.write_text("structure,tolerance_mm\nParotid-Lt,2.85\nLens,1\n")
    assert load_tolerances(good_csv) == {"Parotid-Lt": 2.85, "Lens": 1.0}
    cases = {
        "neg.yaml": ("Lens: -1\n", "Lens"),
        "text.yaml": ("Lens: wide\n", "Lens"),
        "list.yaml": ("- 1\n- 2\n", "mapping"),
        "cols.csv": ("Lens,1,2\n", "columns"),
        "nan.csv": ("Lens,nan\n", "Lens"),
        "empty.yaml": ("{}\n", "empty"),
        "t.txt": ("Lens: 1\n", ".yaml, .yml or .csv"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError, match=expected) as info:
            load_tolerances(path)
        assert str(path) in str(info.value)
    with pytest.raises(InputError, match="cannot read"):
        load_tolerances(tmp_path / "missing.yaml")


def _labels(array: np.ndarray) -> Volume:
    g = Geometry(shape=array.shape, spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0))  # type: ignore[arg-type]
    return Volume(array.astype(np.uint8), g, VolumeKind.LABELS)


def _organs(shift: int) -> np.ndarray:
    """A 'Parotid-Lt' box (label 1) and a 'GTV' box (label 2), shifted by columns."""
    array = np.zeros((8, 24, 24), np.uint8)
    array[2:6, 4:14, 4:12] = 1
    array[2:5, 16:20, 16:20] = 2
    return np.roll(array, shift, axis=2)


def _folder(root: Path, shift: int) -> Path:
    root.mkdir(parents=True)
    for case in ("a", "b"):
        nifti.save(_labels(_organs(shift)), root / f"{case}.nii.gz")
    return root


def test_per_structure_tolerances_reach_the_csv_and_the_surface_dice(tmp_path: Path) -> None:
    ref, pred = _folder(tmp_path / "ref", 0), _folder(tmp_path / "pred", 3)
    labels = {1: "Parotid-Lt", 2: "GTV"}
    summary = evaluate_folder(pred, ref, tmp_path / "out", labels=labels, tolerance_mm=1.0)
    with summary.per_case_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_name = {r["name"]: r for r in rows if r["case"] == "a"}
    parotid = HN_OAR_TOLERANCES_MM["Parotid_L"]
    assert float(by_name["Parotid-Lt"]["tolerance_mm"]) == parotid
    assert by_name["Parotid-Lt"]["tolerance_source"] == HN_OAR_SOURCE
    assert float(by_name["GTV"]["tolerance_mm"]) == 1.0
    # a 3-column shift is within the parotid's 5.27 mm but not within the GTV's 1 mm
    assert float(by_name["Parotid-Lt"]["surface_dice"]) == 1.0
    assert float(by_name["GTV"]["surface_dice"]) < 0.75
    assert float(by_name["Parotid-Lt"]["added_path_length_mm"]) == 0.0
    assert float(by_name["GTV"]["added_path_length_mm"]) > 0.0
    document = json.loads(summary.summary_json.read_text())
    assert document["tolerances"]["GTV"] == {"mm": 1.0, "source": "--tolerance-mm"}
    with summary.per_slice_csv.open(newline="") as fh:
        slices = list(csv.DictReader(fh))
    assert {r["slice"] for r in slices if r["name"] == "GTV"} == {"2", "3", "4"}
    # a user table overrides the built-in one
    table = tmp_path / "tol.yaml"
    table.write_text("Parotid_L: 0.5\n")
    from typer.testing import CliRunner

    from medseg.cli import app

    out = tmp_path / "out2"
    args = ["evaluate", str(pred), str(ref), "--out", str(out), "--tolerances", str(table)]
    rois = tmp_path / "rois.yaml"
    rois.write_text("rois: {1: Parotid-Lt, 2: GTV}\n")
    result = CliRunner().invoke(app, [*args, "--rois", str(rois)])
    assert result.exit_code == 0, result.output
    with (out / "metrics_per_case.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["name"] == "Parotid-Lt"]
    assert {float(r["tolerance_mm"]) for r in rows} == {0.5}
    assert {r["tolerance_source"] for r in rows} == {f"file {table}"}
    assert {float(r["surface_dice"]) for r in rows} != {1.0}


def test_reference_agreement_flags_structures_outside_the_experts(tmp_path: Path) -> None:
    expert_a, expert_b = _folder(tmp_path / "a", 0), _folder(tmp_path / "b", 1)
    labels = {1: "Parotid-Lt", 2: "GTV"}
    agreement = evaluate_folder(
        expert_b, expert_a, tmp_path / "experts", labels=labels, tolerance_mm=1.0
    )
    good = _folder(tmp_path / "good", 0)  # the model equals expert A: within the experts
    close = evaluate_folder(
        good,
        expert_a,
        tmp_path / "out-good",
        labels=labels,
        tolerance_mm=1.0,
        reference_agreement=agreement.summary_json,
    )
    assert not any(c.outside for c in close.expert_agreement.values())
    far = _folder(tmp_path / "far", 4)
    summary = evaluate_folder(
        far,
        expert_a,
        tmp_path / "out-far",
        labels=labels,
        tolerance_mm=1.0,
        reference_agreement=agreement.summary_json.parent,
    )
    gtv = summary.expert_agreement["GTV"]
    assert gtv.outside and "dice" in gtv.worse and "hausdorff95_mm" in gtv.worse
    assert gtv.experts["dice"] == pytest.approx(agreement.statistics["GTV"]["dice"]["median"])
    assert summary.agreement_csv is not None
    with summary.agreement_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["name"], r["metric"]) for r in rows if r["outside"] == "True"} >= {("GTV", "dice")}
    with pytest.raises(ConfigError, match="tolerance"):
        evaluate_folder(
            far,
            expert_a,
            tmp_path / "out-other-tolerance",
            labels=labels,
            tolerance_mm=2.0,
            reference_agreement=agreement.summary_json,
        )
    bogus = tmp_path / "bogus.json"
    bogus.write_text("[1, 2]")
    with pytest.raises(InputError, match="bogus.json"):
        evaluate_folder(
            far,
            expert_a,
            tmp_path / "out-bogus",
            labels=labels,
            tolerance_mm=1.0,
            reference_agreement=bogus,
        )
    assert not (tmp_path / "out-bogus").exists()  # refused before the output is claimed
    from typer.testing import CliRunner

    from medseg.cli import app

    rois = tmp_path / "rois.yaml"
    rois.write_text("rois: {1: Parotid-Lt, 2: GTV}\n")
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--rois",
            str(rois),
            str(far),
            str(expert_a),
            "--out",
            str(tmp_path / "out-cli"),
            "--tolerance-mm",
            "1",
            "--reference-agreement",
            str(agreement.summary_json),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "outside the experts' agreement: GTV (dice" in result.output
