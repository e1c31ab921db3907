"""k-fold ensembles: the folds of ``medseg train --folds all`` applied as one model.

Two tiny folds are trained once for the module on synthetic phantoms (with a local sqlite
MLflow store); the referee for the averaging is each fold's own network, whose softmaxes are
averaged here by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from medseg import preprocess
from medseg.cli import app
from medseg.config import ExperimentConfig, load_config
from medseg.errors import ModelError
from medseg.infer import predict, predict_probabilities
from medseg.model import (
    FoldEnsemble,
    LoadedModel,
    build_network,
    load_checkpoint,
    load_ensemble,
    save_checkpoint,
)
from medseg.pipeline import load_model
from medseg.synthetic import phantom
from medseg.training.crossval import FoldsResult, fold_checkpoints, train_folds
from medseg.volume import Volume
from tests.conftest import require_module

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
REGISTERED = "ensemble-test"


@dataclasses.dataclass(frozen=True)
class Folds:
    """The module's trained folds (read them, never write them: copy first)."""

    out: Path
    result: FoldsResult
    config: ExperimentConfig
    tracking_uri: str
    case_dir: Path  # a DICOM phantom study no fold trained on


@pytest.fixture(scope="module")
def folds(tmp_path_factory: pytest.TempPathFactory) -> Folds:
    root = tmp_path_factory.mktemp("ensemble")
    datalist = phantom.make_dataset(
        root / "phantoms", 3, seed=11, shape=(16, 64, 64), n_tumours=1, radius_range_mm=(5, 7)
    )
    config = load_config(TINY)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # one epoch leaves speckle, one piece without holes keeps contouring fast (a mask with a
    # thousand holes takes minutes in contours._join_holes)
    one_piece = config.postprocess.default.model_copy(
        update={"keep_largest_component": True, "fill_holes": "slice"}
    )
    config = config.model_copy(
        update={
            "postprocess": config.postprocess.model_copy(update={"default": one_piece}),
            "data": config.data.model_copy(update={"datalist": datalist, "num_folds": 2}),
            "train": config.train.model_copy(update={"epochs": 1, "samples_per_case": 2}),
            "tracking": config.tracking.model_copy(
                update={
                    "tracking_uri": uri,
                    "experiment": "ensemble",
                    "registered_model_name": REGISTERED,
                }
            ),
        }
    )
    result = train_folds(config, root / "folds")
    case = phantom.make_case(99, shape=(16, 64, 64), n_tumours=1, radius_range_mm=(5, 7))
    paths = phantom.write_case(case, root / "case", patient_id="ENS-1", patient_name="DOE^JANE")
    return Folds(root / "folds", result, config, uri, paths.ct_dir)


def _snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _by_hand(checkpoints: list[Path], x: torch.Tensor) -> torch.Tensor:
    """mean_k softmax(net_k(x)), each fold loaded on its own."""
    with torch.inference_mode():
        return torch.stack(
            [torch.softmax(load_checkpoint(p).network(x), dim=1) for p in checkpoints]
        ).mean(dim=0)


def _one_window(model: LoadedModel, backend: str) -> LoadedModel:
    """``model`` whose one window covers a whole roi-sized image, always run."""
    return model.with_infer(backend=backend, body_threshold_hu=None)


# ---------------------------------------------------------------------------------------------
# the averaging


def test_fold_ensemble_is_the_mean_of_the_folds_softmax(folds: Folds) -> None:
    checkpoints = [r.checkpoint_path for r in folds.result.folds]
    ensemble = load_ensemble(checkpoints)
    x = torch.rand((2, 1, 16, 32, 32), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = ensemble.network(x)
    expected = _by_hand(checkpoints, x)
    torch.testing.assert_close(torch.exp(out), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.softmax(out, dim=1), expected, rtol=0, atol=1e-6)
    # the folds differ, so the mean is not just one of them
    single = _by_hand(checkpoints[:1], x)
    assert float((single - expected).abs().max()) > 1e-3


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"], ids=["torch", "onnxruntime"])
def test_predicted_probabilities_are_the_folds_mean(folds: Folds, backend: str) -> None:
    """Through all of medseg.infer (normalising, window, blending, softmax) with one window."""
    if backend == "onnxruntime":
        require_module("onnxruntime")
    checkpoints = [r.checkpoint_path for r in folds.result.folds]
    model = _one_window(load_model(folds.out), backend)
    roi = model.config.infer.roi_size
    case = phantom.make_case(5, shape=roi, n_tumours=1, radius_range_mm=(3, 4))
    image: Volume = case.image
    got = np.asarray(predict_probabilities(model, image).array)
    x = torch.from_numpy(preprocess.normaliser(image.array, model.config.preprocess)(image.array))
    expected = _by_hand(checkpoints, x[None, None])[0].numpy()
    # the blended scores are kept in float16
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-3)
    # the labels are the argmax of the mean, wherever float16 rounding cannot decide it
    labels = np.asarray(predict(model, image).array)
    clear = np.abs(expected[1] - expected[0]) > 4e-3
    assert clear.mean() > 0.5
    assert np.array_equal(labels[clear], np.argmax(expected, axis=0)[clear])


def test_deep_supervision_folds_give_full_resolution_only() -> None:
    config = load_config(TINY)
    dynunet = config.model.model_copy(
        update={"name": "dynunet", "deep_supervision": True, "deep_supervision_levels": 1}
    )
    torch.manual_seed(0)
    networks = [build_network(dynunet).eval() for _ in range(2)]
    ensemble = FoldEnsemble(networks).eval()
    x = torch.rand((1, 1, 16, 32, 32))
    with torch.inference_mode():
        out = ensemble(x)
        expected = torch.stack([torch.softmax(n(x), dim=1) for n in networks]).mean(dim=0)
    assert out.shape == (1, 2, 16, 32, 32)
    torch.testing.assert_close(torch.exp(out), expected, rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError, match="inference"):
        ensemble.train()(x)


# ---------------------------------------------------------------------------------------------
# what loads as an ensemble


def test_the_folds_folder_loads_as_one_model_and_a_checkpoint_as_before(folds: Folds) -> None:
    model = load_model(folds.out)
    assert isinstance(model.network, FoldEnsemble) and len(model.network.folds) == 2
    assert model.folds == fold_checkpoints(folds.out)
    assert model.folds == tuple(r.checkpoint_path for r in folds.result.folds)
    assert model.source_path == folds.out and model.extra["folds"] == 2
    assert model.config == folds.config
    single = load_model(folds.out / "fold_0" / "best.pt")
    assert single.folds == () and not isinstance(single.network, FoldEnsemble)


def test_mlflow_holds_one_ensemble_model_over_nested_fold_runs(
    folds: Folds, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", folds.tracking_uri)  # for MLflow's own loaders

    result = folds.result
    assert result.model_uri == f"runs:/{result.run_id}/model"
    client = mlflow.MlflowClient(folds.tracking_uri)
    parent = client.get_run(result.run_id)
    assert parent.info.run_name == "ensemble-folds" and parent.info.status == "FINISHED"
    children = [client.get_run(r.run_id) for r in result.folds]
    assert [c.info.run_name for c in children] == ["ensemble-fold0", "ensemble-fold1"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {result.run_id}
    # only the ensemble is registered: every version of the name is the k-fold model
    versions = client.search_model_versions(f"name='{REGISTERED}'")
    assert [v.run_id for v in versions] == [result.run_id]

    reference = load_model(folds.out)
    x = torch.rand((1, 1, 16, 32, 32), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = reference.network(x)
    for uri in (result.model_uri, f"models:/{REGISTERED}/{versions[0].version}"):
        loaded = load_model(uri, tracking_uri=folds.tracking_uri)
        assert isinstance(loaded.network, FoldEnsemble) and len(loaded.folds) == 2, uri
        assert [p.name for p in loaded.folds] == ["fold_0.pt", "fold_1.pt"]
        with torch.inference_mode():
            torch.testing.assert_close(loaded.network(x), expected, rtol=0, atol=0)
    assert parent.data.tags["folds"] == "2"
    # the MLflow flavour itself: mlflow.pytorch.load_model gives the same FoldEnsemble
    import mlflow.pytorch
    from mlflow.models import get_model_info

    info = get_model_info(result.model_uri)
    assert info.metadata["folds"] == 2
    assert info.metadata["fold_run_ids"] == [r.run_id for r in result.folds]
    assert [s["name"] for s in info.metadata["structures"]] == ["tumour"]
    flavour = mlflow.pytorch.load_model(result.model_uri)
    assert isinstance(flavour, FoldEnsemble)
    with torch.inference_mode():
        torch.testing.assert_close(flavour.eval()(x), expected, rtol=0, atol=0)
    # a fold's own run still has its own single model
    fold_model = load_model(result.folds[1].model_uri or "", tracking_uri=folds.tracking_uri)
    assert fold_model.folds == ()


# ---------------------------------------------------------------------------------------------
# the commands


def test_predict_cli_with_the_folds_folder(folds: Folds, tmp_path: Path) -> None:
    before = _snapshot(folds.out), _snapshot(folds.case_dir)
    out = tmp_path / "pred"
    result = CliRunner().invoke(
        app, ["predict", str(folds.case_dir), str(out), "--model", str(folds.out)]
    )
    assert result.exit_code == 0, result.output
    assert (_snapshot(folds.out), _snapshot(folds.case_dir)) == before
    from medseg.io import dicom, nifti
    from medseg.postprocess import apply_postprocess
    from medseg.volume import VolumeKind

    labels = nifti.load(out / "labels.nii.gz", VolumeKind.LABELS)
    model = load_model(folds.out)
    raw = predict(model, dicom.load_series(folds.case_dir))
    expected = apply_postprocess(raw, model.config.postprocess, model.structures)
    assert np.array_equal(np.asarray(labels.array), np.asarray(expected.array))
    page = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "2-fold ensemble" in page and "DOE" not in page.split("Model:")[1][:200]
    assert np.asarray(labels.array).any(), "no structure found: the RT-STRUCT check is void"
    structure_set = pydicom.dcmread(out / "rtstruct.dcm")
    descriptions = [r.ROIGenerationDescription for r in structure_set.StructureSetROISequence]
    assert descriptions and all("2-fold ensemble" in d for d in descriptions), descriptions


@pytest.mark.parametrize("source", ["folder", "runs", "models"], ids=["folder", "runs", "models"])
def test_batch_with_the_ensemble(
    folds: Folds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """The folder and its MLflow model are one model to the batch ledger: the same id."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", folds.tracking_uri)
    model = {
        "folder": str(folds.out),
        "runs": folds.result.model_uri or "",
        "models": f"models:/{REGISTERED}/1",
    }[source]
    inputs = tmp_path / "in"
    shutil.copytree(folds.case_dir.parent, inputs / "patient")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", str(inputs), str(out), "--model", model])
    assert result.exit_code == 0, result.output
    db = sqlite3.connect(out / "ledger.sqlite")
    try:
        rows = db.execute("SELECT status, model_id FROM cases").fetchall()
    finally:
        db.close()
    digests = b"".join(hashlib.sha256(p.read_bytes()).digest() for p in fold_checkpoints(folds.out))
    assert rows == [("done", "sha256:" + hashlib.sha256(digests).hexdigest()[:16])]


# ---------------------------------------------------------------------------------------------
# what is refused


def _copy(folds: Folds, tmp_path: Path) -> Path:
    copy = tmp_path / "folds"
    shutil.copytree(folds.out, copy)
    return copy


def _refit(checkpoint: Path, **sections: object) -> None:
    """Rewrite ``checkpoint`` with some config sections changed (the same weights)."""
    loaded = load_checkpoint(checkpoint)
    config = loaded.config.model_copy(
        update={
            name: getattr(loaded.config, name).model_copy(update=update)
            for name, update in sections.items()
        }
    )
    save_checkpoint(checkpoint, loaded.network, config, dict(loaded.extra))


def _break_missing_best(folder: Path) -> Path:
    (folder / "fold_1" / "best.pt").unlink()
    return folder / "fold_1" / "best.pt"


def _break_missing_fold(folder: Path) -> Path:
    shutil.rmtree(folder / "fold_1")
    return folder / "fold_1"


def _break_stray_fold(folder: Path) -> Path:
    shutil.copytree(folder / "fold_1", folder / "fold_2")
    return folder / "fold_2"


def _break_roi_size(folder: Path) -> Path:
    _refit(folder / "fold_1" / "best.pt", infer={"roi_size": (16, 16, 16)})
    return folder / "fold_1" / "best.pt"


def _break_spacing(folder: Path) -> Path:
    _refit(folder / "fold_1" / "best.pt", preprocess={"spacing_mm": (2.5, 1.5, 1.5)})
    return folder / "fold_1" / "best.pt"


def _break_orientation(folder: Path) -> Path:
    _refit(folder / "fold_1" / "best.pt", preprocess={"orientation": "LPS"})
    return folder / "fold_1" / "best.pt"


def _break_window(folder: Path) -> Path:
    _refit(folder / "fold_1" / "best.pt", preprocess={"upper_hu": 300.0})
    return folder / "fold_1" / "best.pt"


def _break_structures(folder: Path) -> Path:
    loaded = load_checkpoint(folder / "fold_1" / "best.pt")
    renamed = (loaded.config.model.labels[0].model_copy(update={"name": "lesion"}),)
    _refit(folder / "fold_1" / "best.pt", model={"labels": renamed})
    return folder / "fold_1" / "best.pt"


def _break_split_file(folder: Path) -> Path:
    (folder / "splits.json").write_text("{not json", encoding="utf-8")
    return folder / "splits.json"


BREAKS = {
    "fold-without-best-checkpoint": (_break_missing_best, "missing"),
    "fold-listed-without-folder": (_break_missing_fold, "missing"),
    "fold-folder-not-in-splits": (_break_stray_fold, "not a fold of"),
    "roi-size-differs": (_break_roi_size, "infer.roi_size"),
    "spacing-differs": (_break_spacing, "preprocess.spacing_mm"),
    "orientation-differs": (_break_orientation, "preprocess.orientation"),
    "intensity-window-differs": (_break_window, "preprocess.upper_hu"),
    "structures-differ": (_break_structures, "model.labels.0.name"),
    "unreadable-splits-json": (_break_split_file, "not a readable split file"),
}


@pytest.mark.parametrize("name", list(BREAKS), ids=list(BREAKS))
def test_a_broken_ensemble_is_refused_in_one_line(folds: Folds, tmp_path: Path, name: str) -> None:
    folder = _copy(folds, tmp_path)
    breaker, words = BREAKS[name]
    culprit = breaker(folder)
    before = _snapshot(folder), _snapshot(folds.case_dir)
    out = tmp_path / "pred"
    result = CliRunner().invoke(
        app, ["predict", str(folds.case_dir), str(out), "--model", str(folder)]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert str(culprit) in lines[0] and words in lines[0], lines[0]
    assert not out.exists()
    assert (_snapshot(folder), _snapshot(folds.case_dir)) == before


def test_an_empty_folder_is_refused(folds: Folds, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(
        app, ["predict", str(folds.case_dir), str(tmp_path / "pred"), "--model", str(empty)]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(empty) in lines[0] and "splits.json" in lines[0], lines
    assert list(empty.iterdir()) == []


def test_an_ensemble_too_large_for_one_onnx_file_is_refused_when_loaded(
    folds: Folds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medseg.model

    folder = _copy(folds, tmp_path)
    for k in range(2):
        _refit(folder / f"fold_{k}" / "best.pt", infer={"backend": "onnxruntime"})
    one_fold = sum(
        t.numel() * t.element_size()
        for t in load_checkpoint(folder / "fold_0" / "best.pt").network.state_dict().values()
    )
    monkeypatch.setattr(medseg.model, "ONNX_MAX_WEIGHT_BYTES", int(1.5 * one_fold))
    with pytest.raises(ModelError, match=r"2 folds hold .* bytes of weights.*'torch'") as caught:
        load_model(folder)
    assert str(folder) in str(caught.value)
