"""The demo path end to end with the tiny config, checked by plastimatch and MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

import medseg
from medseg import geometry as geo
from medseg.cli import app
from medseg.io import nifti
from medseg.volume import VolumeKind
from tests.conftest import require_data
from tests.rt_helpers import dice, plastimatch_masks, require_geometry_match

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "demo"
    config_text = (REPO / "configs" / "tiny.yaml").read_text()
    assert "registered_model_name: null" in config_text
    config_path = tmp_path / "tiny-registered.yaml"
    config_path.write_text(
        config_text.replace("registered_model_name: null", "registered_model_name: tiny-demo")
    )
    result = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--config", str(config_path), "--cases", "4"]
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
    assert volumes["labels"]["tumour"]["volume_ml"] == pytest.approx(
        count * geo.voxel_volume_ml(labels.geometry)
    )

    # the MLflow run has params, per-epoch metrics, the resolved config and the model
    client = mlflow.MlflowClient(tracking_uri=summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    assert run.data.params["train.epochs"] == "6"
    assert len(run.data.tags["dataset_fingerprint"]) >= 16  # a hash of the case ids
    assert run.data.tags["medseg_version"] == medseg.__version__
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 6
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert any("config" in a for a in artifacts), artifacts
    assert summary["model_uri"].startswith("runs:/")

    # `medseg predict` takes the MLflow model URI and reproduces the demo's prediction
    monkeypatch.setenv("MLFLOW_TRACKING_URI", summary["tracking_uri"])
    again = CliRunner().invoke(
        app, ["predict", "--model", summary["model_uri"], str(ct_dir), str(tmp_path / "again")]
    )
    assert again.exit_code == 0, again.output
    relabelled = nifti.load(tmp_path / "again" / "labels.nii.gz", VolumeKind.LABELS)
    np.testing.assert_array_equal(relabelled.array, labels.array)
    assert (tmp_path / "again" / "rtstruct.dcm").is_file()

    # ... and the registered model's version
    registered = CliRunner().invoke(
        app,
        ["predict", "--model", "models:/tiny-demo/1", str(ct_dir), str(tmp_path / "registered")],
    )
    assert registered.exit_code == 0, registered.output
    relabelled = nifti.load(tmp_path / "registered" / "labels.nii.gz", VolumeKind.LABELS)
    np.testing.assert_array_equal(relabelled.array, labels.array)


@pytest.mark.parametrize(
    ("make_input", "problem"),
    [
        pytest.param(lambda p: p.mkdir(), "no DICOM", id="empty-folder"),
        pytest.param(
            lambda p: (p.mkdir(), (p / "a.txt").write_text("x")), "no DICOM", id="non-dicom-only"
        ),
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
    result = CliRunner().invoke(
        app, ["predict", "--model", str(checkpoint), str(scan), str(tmp_path / "out")]
    )
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
    result = CliRunner().invoke(
        app, ["predict", "--model", str(checkpoint), str(path), str(tmp_path / "out")]
    )
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
    from medseg.synthetic import phantom

    case = phantom.make_case(5, shape=(20, 64, 64), n_tumours=1)
    paths = phantom.write_case(case, tmp_path / "case", patient_id="PHANTOM-CLI")
    rois = tmp_path / "rois.yaml"
    rois.write_text("rois:\n  - {label: 1, name: GTV, color: [255, 0, 0], type: GTV}\n")
    out = tmp_path / "rs.dcm"
    args = [
        "export-rtstruct",
        "--ct",
        str(paths.ct_dir),
        "--labels",
        str(paths.labels_path),
        "--rois",
        str(rois),
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    masks = plastimatch_masks(out, paths.ct_dir, tmp_path / "plastimatch")
    require_geometry_match(masks["GTV"].geometry, case.labels.geometry)
    assert dice(masks["GTV"].array, case.labels.array == 1) == 1.0


def test_export_rtstruct_command_refuses_labels_off_the_grid(tmp_path: Path) -> None:
    from medseg.synthetic import phantom

    case = phantom.make_case(6, shape=(20, 64, 64), n_tumours=1)
    paths = phantom.write_case(case, tmp_path / "case", patient_id="PHANTOM-CLI")
    other = phantom.make_case(6, shape=(20, 64, 64), n_tumours=1, spacing_mm=(2.0, 1.5, 1.5))
    nifti.save(other.labels, tmp_path / "other.nii.gz")
    out = tmp_path / "rs.dcm"
    result = CliRunner().invoke(
        app,
        [
            "export-rtstruct",
            "--ct",
            str(paths.ct_dir),
            "--labels",
            str(tmp_path / "other.nii.gz"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2
    assert "not on the grid" in result.output and str(tmp_path / "other.nii.gz") in result.output
    assert not out.exists()


def test_inspect_lists_series_and_problems(tmp_path: Path) -> None:
    from medseg.synthetic import phantom

    case = phantom.make_case(7, shape=(20, 64, 64), n_tumours=1)
    paths = phantom.write_case(case, tmp_path / "case", patient_id="PHANTOM-INSPECT")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (
        f"{paths.series_instance_uid} (CT, 'medseg phantom CT', series 1, 20 slices) axial"
        in result.output
    )
    as_json = CliRunner().invoke(app, ["inspect", str(tmp_path), "--json"])
    inventory = json.loads(as_json.output)
    assert inventory["studies"][0]["series"][0]["n_slices"] == 20
    assert "PHANTOM" not in as_json.output  # no patient name or ID in the inventory


def test_evaluate_command_names_labels_from_a_rois_file(tmp_path: Path) -> None:
    from medseg.synthetic import phantom

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    case = phantom.make_case(8, shape=(20, 64, 64), n_tumours=1)
    nifti.save(case.labels, pred / "a.nii.gz")
    nifti.save(case.labels, ref / "a.nii.gz")
    rois = tmp_path / "rois.yaml"
    rois.write_text("rois:\n  - {label: 1, name: GTV primary, type: GTV}\n")
    result = CliRunner().invoke(
        app, ["evaluate", str(pred), str(ref), "--out", str(tmp_path / "eval"), "--rois", str(rois)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert summary["labels"] == {"1": "GTV primary"}


def test_evaluate_command_scores_cases_and_flags_failures(tmp_path: Path) -> None:
    from medseg.synthetic import phantom

    pred, ref = tmp_path / "pred", tmp_path / "ref"
    case = phantom.make_case(8, shape=(20, 64, 64), n_tumours=1)
    nifti.save(case.labels, pred / "a.nii.gz")
    nifti.save(case.labels, ref / "a.nii.gz")
    nifti.save(case.labels, ref / "b.nii.gz")  # no prediction for b: a failed case, exit 1
    result = CliRunner().invoke(
        app, ["evaluate", str(pred), str(ref), "--out", str(tmp_path / "eval")]
    )
    assert result.exit_code == 1, result.output
    assert "1 cases evaluated, 1 failed" in result.output
    rows = (tmp_path / "eval" / "metrics_per_case.csv").read_text().splitlines()
    header = rows[0].split(",")
    first = dict(zip(header, rows[1].split(",")))
    assert float(first["dice"]) == 1.0


class _ThresholdNet:
    """A stand-in network: label 1 wherever the windowed intensity exceeds 0.5."""

    def __new__(cls) -> object:
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.scale = torch.nn.Parameter(torch.ones(()))  # so .parameters() has a device

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.cat([0.5 - x, x - 0.5], dim=1) * self.scale

        return Net()


def test_predict_case_applies_the_models_postprocess_and_export_config(tmp_path: Path) -> None:
    import cc3d

    from medseg.config import LabelPostprocessConfig, builtin_config_path, load_config
    from medseg.infer import predict
    from medseg.io.dicom import load_series
    from medseg.model import LoadedModel
    from medseg.pipeline import predict_case
    from medseg.synthetic import phantom

    case = phantom.make_case(seed=3)
    paths = phantom.write_case(case, tmp_path / "case", patient_id="PP-1")
    base = load_config(builtin_config_path("tiny.yaml"))
    keep_largest = base.model_copy(
        update={
            "postprocess": base.postprocess.model_copy(
                update={"labels": {1: LabelPostprocessConfig(keep_largest_component=True)}}
            )
        }
    )
    network = _ThresholdNet()
    raw = predict(LoadedModel(network, base, {1: "tumour"}, "test"), load_series(paths.ct_dir))
    _, n_raw = cc3d.connected_components(np.asarray(raw.array) == 1, return_N=True)
    assert n_raw > 1, "the stand-in network must leave several components for this test"

    model = LoadedModel(network, keep_largest, {1: "tumour"}, "test")
    result = predict_case(model, paths.ct_dir, tmp_path / "out")
    written = nifti.load(result.labels_path, VolumeKind.LABELS)
    _, n_written = cc3d.connected_components(np.asarray(written.array) == 1, return_N=True)
    assert n_written == 1
    # the RT-STRUCT carries the post-processed structure, not the raw one
    masks = plastimatch_masks(result.rtstruct_path, paths.ct_dir, tmp_path / "pm")
    assert dice(masks["tumour"].array, np.asarray(written.array) == 1) >= 0.999


def test_predict_case_subvoxel_contours_follow_the_probabilities(tmp_path: Path) -> None:
    """export.contours: subvoxel -> smooth contours from the probabilities, whose plastimatch
    rasterisation stays within the issue's bounds (Dice >= 0.95, volume within 3 %) of the
    written label map, and which differ from the exact voxel-edge outline."""
    import pydicom

    from medseg.config import ExportConfig, LabelPostprocessConfig, builtin_config_path, load_config
    from medseg.model import LoadedModel
    from medseg.pipeline import predict_case
    from medseg.synthetic import phantom

    case = phantom.make_case(seed=3)
    paths = phantom.write_case(case, tmp_path / "case", patient_id="PP-2")
    base = load_config(builtin_config_path("tiny.yaml"))
    largest = base.postprocess.model_copy(
        update={"labels": {1: LabelPostprocessConfig(keep_largest_component=True)}}
    )
    outlines = {}
    for mode in ("voxel_edges", "subvoxel"):
        config = base.model_copy(
            update={"postprocess": largest, "export": ExportConfig(contours=mode)}
        )
        model = LoadedModel(_ThresholdNet(), config, {1: "tumour"}, "test")
        result = predict_case(model, paths.ct_dir, tmp_path / mode)
        written = np.asarray(nifti.load(result.labels_path, VolumeKind.LABELS).array) == 1
        assert written.sum() * geo.voxel_volume_ml(case.labels.geometry) >= 0.5
        raster = plastimatch_masks(result.rtstruct_path, paths.ct_dir, tmp_path / f"pm-{mode}")
        mask = np.asarray(raster["tumour"].array) > 0
        assert dice(mask, written) >= (0.999 if mode == "voxel_edges" else 0.95)
        assert abs(mask.sum() / written.sum() - 1.0) <= (0.005 if mode == "voxel_edges" else 0.03)
        ds = pydicom.dcmread(result.rtstruct_path)
        outlines[mode] = [c.ContourData for c in ds.ROIContourSequence[0].ContourSequence]
    assert outlines["voxel_edges"] != outlines["subvoxel"]


def test_train_command_on_dicom_rtstruct_patients_then_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`medseg train` with data.dicom_root (real CT + RT-STRUCT patients, GTV by pattern), then
    `--resume last.pt` with more epochs continues that run instead of starting over."""
    import yaml

    root = require_data("lung-gtv-ct")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["data"] = {"dicom_root": str(root), "labels": {1: ["gtv*"]}, "cache_dir": "cache"}
    raw["model"]["labels"] = {1: "GTV"}
    raw["train"].update({"epochs": 1, "samples_per_case": 2})
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(raw))
    raw["train"]["epochs"] = 2
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(raw))

    first = CliRunner().invoke(app, ["train", "one.yaml", "--out", "run"])
    assert first.exit_code == 0, first.output
    assert "best checkpoint" in first.output
    resumed = CliRunner().invoke(
        app, ["train", "two.yaml", "--out", "run", "--resume", "run/last.pt"]
    )
    assert resumed.exit_code == 0, resumed.output
    import torch

    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert len(state["training_state"]["history"]) == 2
    bad = CliRunner().invoke(app, ["train", "two.yaml", "--fold", "0", "--resume", "run/last.pt"])
    assert bad.exit_code == 2


#: A phantom small enough for few windows and few lesions per structure (fast QA pages).
SMALL_PHANTOM = (20, 64, 64)


class _StripesNet:
    """A stand-in network with ``n`` foreground classes: class ``c`` wins in the ``c``-th of
    ``n`` column stripes of every window, so every structure is found in every scan."""

    def __new__(cls, n: int):  # type: ignore[no-untyped-def]
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.scale = torch.nn.Parameter(torch.ones(()))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                width = x.shape[-1]
                stripe = torch.arange(width, device=x.device) * n // width  # 0..n-1
                logits = torch.zeros((x.shape[0], n + 1, *x.shape[2:]), device=x.device)
                for c in range(n):
                    logits[:, c + 1, ..., stripe == c] = 4.0
                return logits * self.scale

        return Net()


def _structures_model(labels: object, *, empty_rois: str = "omit"):  # type: ignore[no-untyped-def]
    from medseg.config import ExperimentConfig, builtin_config_path, load_config
    from medseg.model import LoadedModel

    dumped = load_config(builtin_config_path("tiny.yaml")).model_dump()
    dumped["model"]["labels"] = labels
    dumped["export"]["empty_rois"] = empty_rois
    config = ExperimentConfig.model_validate(dumped)
    network = _StripesNet(len(config.model.labels))
    return LoadedModel(network, config, config.model.label_names, "test")


def test_every_interpreted_type_round_trips_through_predict_rtstruct_and_seg(
    tmp_path: Path,
) -> None:
    import pydicom

    from medseg.io.dicom import load_series
    from medseg.io.rtstruct import read_contours
    from medseg.pipeline import predict_case
    from medseg.structures import InterpretedType
    from medseg.synthetic import phantom

    types = list(InterpretedType)
    model = _structures_model(
        [{"label": i, "name": f"S {t.value}", "type": t.value} for i, t in enumerate(types, 1)]
    )
    paths = phantom.write_case(
        phantom.make_case(seed=3, shape=SMALL_PHANTOM, n_tumours=1),
        tmp_path / "case",
        patient_id="PP-3",
    )
    result = predict_case(model, paths.ct_dir, tmp_path / "out")
    assert result.rtstruct_path is not None
    found = read_contours(result.rtstruct_path, load_series(paths.ct_dir)).by_name()
    assert {name: roi.interpreted_type for name, roi in found.items()} == {
        f"S {t.value}": t.value for t in types
    }
    colours = [roi.colour_rgb for roi in found.values()]
    assert len(set(colours)) == len(types)  # one palette, a distinct colour each
    seg = pydicom.dcmread(result.out_dir / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [f"S {t.value}" for t in types]


def test_target_models_export_target_types_and_codes(tmp_path: Path) -> None:
    """A model trained with CTV, Tumor, PTV or Lesion labels (the short form of old configs
    and checkpoints) exports them as targets, never as ORGAN; SEG codes follow."""
    import pydicom

    from medseg.io.dicom import load_series
    from medseg.io.rtstruct import read_contours
    from medseg.pipeline import predict_case
    from medseg.synthetic import phantom

    model = _structures_model({1: "CTV", 2: "Tumor", 3: "PTV_High", 4: "Lesion", 5: "Parotid L"})
    paths = phantom.write_case(
        phantom.make_case(seed=3, shape=SMALL_PHANTOM, n_tumours=1),
        tmp_path / "case",
        patient_id="PP-4",
    )
    result = predict_case(model, paths.ct_dir, tmp_path / "out")
    assert result.rtstruct_path is not None
    found = read_contours(result.rtstruct_path, load_series(paths.ct_dir)).by_name()
    assert {n: r.interpreted_type for n, r in found.items()} == {
        "CTV": "CTV",
        "Tumor": "GTV",
        "PTV_High": "PTV",
        "Lesion": "GTV",
        "Parotid L": "ORGAN",
    }
    seg = pydicom.dcmread(result.out_dir / "seg.dcm")
    kinds = {s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning
             for s in seg.SegmentSequence}  # fmt: skip
    assert kinds["CTV"].startswith("Clinical target volume")
    assert kinds["Tumor"] == kinds["Lesion"] == "Neoplasm"
    assert kinds["PTV_High"].startswith("Planning target volume")
    assert kinds["Parotid L"] == "Parotid gland"


def test_nothing_found_writes_no_rtstruct_and_says_so(tmp_path: Path) -> None:
    """With empty structures omitted (the default, readable by every reader), a scan where the
    model finds nothing gets no RT-STRUCT or SEG (DICOM needs one ROI); volumes say 0 mL."""
    import torch

    from medseg.pipeline import predict_case
    from medseg.synthetic import phantom

    model = _structures_model({1: "GTV"})
    with torch.no_grad():
        model.network.scale.fill_(-1.0)  # background everywhere
    paths = phantom.write_case(
        phantom.make_case(seed=3, shape=SMALL_PHANTOM, n_tumours=1),
        tmp_path / "case",
        patient_id="PP-5",
    )
    result = predict_case(model, paths.ct_dir, tmp_path / "out")
    assert result.rtstruct_path is None
    assert (
        not (result.out_dir / "rtstruct.dcm").exists() and not (result.out_dir / "seg.dcm").exists()
    )
    assert result.volumes_ml == {"GTV": 0.0}
    page = (result.out_dir / "report" / "report.html").read_text()
    assert "Not found in this scan: GTV." in page


def test_predict_case_finds_components_once_and_writes_what_the_parts_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One connected-component labelling per structure per case; volumes.json, lesions.csv
    and the QA page are what the volumes report and the report writer give on their own."""
    from medseg import postprocess
    from medseg.io.dicom import load_series
    from medseg.pipeline import predict_case
    from medseg.report import write_lesions_csv, write_report, write_volumes_json
    from medseg.synthetic import phantom

    model = _structures_model({1: "GTV", 2: "Parotid L"})
    paths = phantom.write_case(
        phantom.make_case(seed=3, shape=SMALL_PHANTOM, n_tumours=1),
        tmp_path / "case",
        patient_id="PP-6",
    )
    calls: list[int] = []
    labelling = postprocess.cc3d.connected_components

    def counting(mask: np.ndarray, **kwargs: object) -> object:
        calls.append(int(mask.sum()))
        return labelling(mask, **kwargs)

    monkeypatch.setattr(postprocess.cc3d, "connected_components", counting)
    result = predict_case(model, paths.ct_dir, tmp_path / "out")
    # the model's config has no clean-up rules: only the lesions are labelled, once each
    assert len(calls) == 2
    monkeypatch.undo()

    report = postprocess.volumes_report(result.labels, model.label_names)
    assert result.volumes_ml == report.volumes_ml
    assert {s.name for s in report.structures if s.voxel_count} == {"GTV", "Parotid L"}
    parts = tmp_path / "parts"
    volumes = write_volumes_json(
        report,
        parts / "volumes.json",
        stage_seconds=result.stage_seconds,
        precision=result.precision,
    )
    assert (result.out_dir / "volumes.json").read_bytes() == volumes.read_bytes()
    lesions = write_lesions_csv(report, parts / "lesions.csv")
    assert (result.out_dir / "lesions.csv").read_bytes() == lesions.read_bytes()
    assert result.rtstruct_path is not None
    page = write_report(
        load_series(paths.ct_dir),
        result.labels,
        model.structures,
        parts / "report",
        rtstruct_path=result.rtstruct_path,
        model_id=f"medseg test in {result.precision['used']}",
    )
    assert (result.out_dir / "report" / "report.html").read_text() == page.read_text()
