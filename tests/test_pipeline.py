"""The demo path end to end with the tiny config, checked by plastimatch and MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from medseg import geometry as geo
from medseg.cli import app
from medseg.io import nifti
from medseg.volume import VolumeKind
from tests.rt_helpers import dice, plastimatch_masks, require_geometry_match

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--config", str(REPO / "configs" / "tiny.yaml"), "--cases", "4"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "demo_summary.json").read_text())
    assert f"MLflow run id: {summary['run_id']}" in result.output
    assert "tumour volume: predicted" in result.output

    prediction = out / "prediction"
    labels = nifti.load(prediction / "labels.nii.gz", VolumeKind.LABELS)
    ct_dir = out / "test_case" / "ct"

    # the label map is on the exact grid of the input CT
    from medseg.io.dicom import load_series

    assert geo.geometries_equal(labels.geometry, load_series(ct_dir).geometry)
    assert int(labels.array.sum()) > 0, "the tiny model found no tumour; the export check is void"

    # plastimatch, an independent rasteriser, reads the RT-STRUCT back onto the CT
    masks = plastimatch_masks(prediction / "rtstruct.dcm", ct_dir, tmp_path / "plastimatch")
    assert set(masks) == {"tumour"}
    require_geometry_match(masks["tumour"].geometry, labels.geometry)
    assert dice(masks["tumour"].array, labels.array == 1) >= 0.95

    # the other outputs a user opens: DICOM SEG (same masks), lesion table, QA page
    from medseg.io.seg import read_seg

    seg_masks = read_seg(prediction / "seg.dcm", load_series(ct_dir))
    np.testing.assert_array_equal(seg_masks["tumour"].array, labels.array == 1)
    assert (prediction / "lesions.csv").read_text().count("\n") >= 2
    html = (prediction / "report" / "report.html").read_text()
    assert "tumour" in html and ".png" in html

    # volumes.json is voxel count x voxel volume, both from the label map's geometry
    volumes = json.loads((prediction / "volumes.json").read_text())
    count = int(np.count_nonzero(labels.array == 1))
    assert volumes["labels"]["tumour"]["voxel_count"] == count
    assert volumes["labels"]["tumour"]["volume_ml"] == pytest.approx(count * geo.voxel_volume_ml(labels.geometry))

    # the MLflow run has params, per-epoch metrics, the resolved config and the model
    client = mlflow.MlflowClient(tracking_uri=summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    assert run.data.params["train.epochs"] == "6"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 6
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert any("config" in a for a in artifacts), artifacts
    assert summary["model_uri"].startswith("runs:/")

    # `medseg predict` takes the MLflow model URI and reproduces the demo's prediction
    monkeypatch.setenv("MLFLOW_TRACKING_URI", summary["tracking_uri"])
    again = CliRunner().invoke(app, ["predict", "--model", summary["model_uri"], str(ct_dir), str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    relabelled = nifti.load(tmp_path / "again" / "labels.nii.gz", VolumeKind.LABELS)
    np.testing.assert_array_equal(relabelled.array, labels.array)
    assert (tmp_path / "again" / "rtstruct.dcm").is_file()


@pytest.mark.parametrize(
    ("make_input", "problem"),
    [
        pytest.param(lambda p: p.mkdir(), "no DICOM", id="empty-folder"),
        pytest.param(lambda p: (p.mkdir(), (p / "a.txt").write_text("x")), "no DICOM", id="non-dicom-only"),
    ],
)
def test_predict_bad_input_exits_2_with_message(
    tmp_path: Path, make_input: object, problem: str
) -> None:
    from medseg.config import load_config
    from medseg.model import build_network, save_checkpoint

    config = load_config(REPO / "configs" / "tiny.yaml")
    checkpoint = save_checkpoint(tmp_path / "m.pt", build_network(config.model), config)
    scan = tmp_path / "scan"
    make_input(scan)  # type: ignore[operator]
    result = CliRunner().invoke(app, ["predict", "--model", str(checkpoint), str(scan), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert str(scan) in result.output and problem in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_predict_zero_spacing_nifti_exits_2(tmp_path: Path) -> None:
    import nibabel as nib

    from medseg.config import load_config
    from medseg.model import build_network, save_checkpoint

    config = load_config(REPO / "configs" / "tiny.yaml")
    checkpoint = save_checkpoint(tmp_path / "m.pt", build_network(config.model), config)
    path = tmp_path / "zero.nii"
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    nib.save(image, str(path))
    raw = bytearray(path.read_bytes())
    raw[80:84] = np.float32(0.0).tobytes()  # pixdim[1] = 0
    path.write_bytes(bytes(raw))
    result = CliRunner().invoke(app, ["predict", "--model", str(checkpoint), str(path), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert str(path) in result.output and "spacing" in result.output
    assert "Traceback" not in result.output


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("medseg ")


@pytest.mark.slow
def test_readme_demo_reaches_dice_090(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`medseg demo` as the README runs it (built-in config, 8 phantoms): Dice >= 0.90."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "medseg-demo" / "demo_summary.json").read_text())
    assert summary["dice"] >= 0.90
    assert summary["predicted_volume_ml"] == pytest.approx(summary["true_volume_ml"], rel=0.15)
    client = mlflow.MlflowClient(tracking_uri=summary["tracking_uri"])
    versions = client.search_model_versions("name='medseg-demo'")
    assert versions, "the demo registers its model"


def test_export_rtstruct_command_from_a_nifti_label_map(tmp_path: Path) -> None:
    """`medseg export-rtstruct`: a phantom's truth label map onto its CT, read back by plastimatch."""
    from medseg import phantom

    case = phantom.make_case(5, shape=(20, 64, 64), n_tumours=1)
    paths = phantom.write_case(case, tmp_path / "case", patient_id="PHANTOM-CLI")
    rois = tmp_path / "rois.yaml"
    rois.write_text("rois:\n  - {label: 1, name: GTV, color: [255, 0, 0], type: GTV}\n")
    out = tmp_path / "rs.dcm"
    args = ["export-rtstruct", "--ct", str(paths.ct_dir), "--labels", str(paths.labels_path),
            "--rois", str(rois), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    masks = plastimatch_masks(out, paths.ct_dir, tmp_path / "plastimatch")
    require_geometry_match(masks["GTV"].geometry, case.labels.geometry)
    assert dice(masks["GTV"].array, case.labels.array == 1) == 1.0


def test_export_rtstruct_command_refuses_labels_off_the_grid(tmp_path: Path) -> None:
    from medseg import phantom

    case = phantom.make_case(6, shape=(20, 64, 64), n_tumours=1)
    paths = phantom.write_case(case, tmp_path / "case", patient_id="PHANTOM-CLI")
    other = phantom.make_case(6, shape=(20, 64, 64), n_tumours=1, spacing_mm=(2.0, 1.5, 1.5))
    nifti.save(other.labels, tmp_path / "other.nii.gz")
    out = tmp_path / "rs.dcm"
    result = CliRunner().invoke(app, ["export-rtstruct", "--ct", str(paths.ct_dir), "--labels",
                                      str(tmp_path / "other.nii.gz"), "--out", str(out)])
    assert result.exit_code == 2
    assert "not on the grid" in result.output and str(tmp_path / "other.nii.gz") in result.output
    assert not out.exists()


def test_inspect_lists_series_and_problems(tmp_path: Path) -> None:
    from medseg import phantom

    case = phantom.make_case(7, shape=(20, 64, 64), n_tumours=1)
    paths = phantom.write_case(case, tmp_path / "case", patient_id="PHANTOM-INSPECT")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"{paths.series_instance_uid} (CT, 'medseg phantom CT', 20 slices) axial" in result.output
    as_json = CliRunner().invoke(app, ["inspect", str(tmp_path), "--json"])
    inventory = json.loads(as_json.output)
    assert inventory["studies"][0]["series"][0]["n_slices"] == 20
    assert "PHANTOM" not in as_json.output  # no patient name or ID in the inventory


def test_evaluate_command_scores_cases_and_flags_failures(tmp_path: Path) -> None:
    from medseg import phantom

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    case = phantom.make_case(8, shape=(20, 64, 64), n_tumours=1)
    nifti.save(case.labels, pred / "a.nii.gz")
    nifti.save(case.labels, ref / "a.nii.gz")
    nifti.save(case.labels, ref / "b.nii.gz")  # no prediction for b: a failed case, exit 1
    result = CliRunner().invoke(app, ["evaluate", str(pred), str(ref), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 1, result.output
    assert "1 cases evaluated, 1 failed" in result.output
    rows = (tmp_path / "eval" / "metrics_per_case.csv").read_text().splitlines()
    header = rows[0].split(",")
    first = dict(zip(header, rows[1].split(",")))
    assert float(first["dice"]) == 1.0
