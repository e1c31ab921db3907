"""Datasets for training: k-fold splits, cross-validation from the CLI, DICOM+RT-STRUCT source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli import app
from medseg.errors import ConfigError
from medseg.io import nifti
from medseg.training.splits import load_folds, make_folds, write_folds

REPO = Path(__file__).resolve().parents[1]
IDS = [f"training_{i:03d}" for i in range(11)]


def test_folds_partition_the_cases_reproducibly(tmp_path: Path) -> None:
    folds = make_folds(IDS, num_folds=4, seed=3)
    held_out = [i for fold in folds for i in fold.validation]
    assert sorted(held_out) == IDS  # every case validated exactly once
    assert sorted(len(f.validation) for f in folds) == [2, 3, 3, 3]
    for fold in folds:
        assert set(fold.train).isdisjoint(fold.validation)
        assert sorted((*fold.train, *fold.validation)) == IDS
    assert make_folds(IDS[::-1], num_folds=4, seed=3) == folds  # input order does not matter
    assert make_folds(IDS, num_folds=4, seed=4) != folds  # the seed does
    path = write_folds(tmp_path / "splits.json", folds, seed=3)
    assert load_folds(path) == folds
    raw = json.loads(path.read_text())
    assert raw["seed"] == 3 and raw["case_ids"] == IDS


@pytest.mark.parametrize(
    ("ids", "k"), [(IDS[:2], 3), (IDS, 1), (["a", "a", "b"], 2)], ids=["too-few", "k1", "dupes"]
)
def test_impossible_splits_are_refused(ids: list[str], k: int) -> None:
    with pytest.raises(ConfigError):
        make_folds(ids, num_folds=k, seed=0)


def _write_cases(folder: Path, n: int) -> Path:
    from tests.test_train import _sphere_case

    entries = []
    for i in range(n):
        image, labels = _sphere_case(10 + i, shape=(16, 32, 32))
        nifti.save(image, folder / f"img_{i}.nii.gz")
        nifti.save(labels, folder / f"lab_{i}.nii.gz")
        entries.append({"image": f"img_{i}.nii.gz", "label": f"lab_{i}.nii.gz"})
    path = folder / "dataset.json"
    path.write_text(json.dumps({"training": entries}))
    return path


def test_cli_trains_every_fold_with_a_saved_split(tmp_path: Path) -> None:
    import mlflow

    datalist = _write_cases(tmp_path, 3)
    text = (REPO / "configs" / "tiny.yaml").read_text()
    text = text.replace("datalist: null", f"datalist: {datalist}\n  num_folds: 2")
    text = text.replace("epochs: 6", "epochs: 1").replace(
        "samples_per_case: 4", "samples_per_case: 2"
    )
    db = tmp_path / "mlflow.db"
    text = text.replace("tracking_uri: null", f"tracking_uri: sqlite:///{db}")
    config = tmp_path / "cv.yaml"
    config.write_text(text)
    out = tmp_path / "out"

    result = CliRunner().invoke(app, ["train", str(config), "--out", str(out), "--folds", "all"])
    assert result.exit_code == 0, result.output
    folds = load_folds(out / "splits.json")
    assert folds == make_folds([f"training_{i:03d}" for i in range(3)], num_folds=2, seed=0)
    assert (out / "fold_0" / "best.pt").is_file() and (out / "fold_1" / "best.pt").is_file()
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("medseg-tiny").experiment_id])
    # the folds are children of one parent run, which holds their ensemble
    names = sorted(r.info.run_name for r in runs)
    assert names == ["medseg-tiny-fold0", "medseg-tiny-fold1", "medseg-tiny-folds"]
    parent = next(r for r in runs if r.info.run_name == "medseg-tiny-folds")
    assert f"2-fold ensemble: --model {out}" in result.output
    assert f"model: runs:/{parent.info.run_id}/model" in result.output
    import hashlib

    fingerprint = hashlib.sha256(b"training_000\ntraining_001\ntraining_002").hexdigest()
    for run in runs:
        assert [a.path for a in client.list_artifacts(run.info.run_id, "splits")] == [
            "splits/splits.json"
        ]
        assert run.data.tags["dataset_fingerprint"] == fingerprint

    bad = CliRunner().invoke(app, ["train", str(config), "--out", str(out), "--fold", "2"])
    assert bad.exit_code != 0 and "fold 2 does not exist" in bad.output
    usage = CliRunner().invoke(app, ["train", str(config), "--folds", "some"])
    assert usage.exit_code == 2


# ---------------------------------------------------------------------------------------------
# DICOM + RT-STRUCT folder of patients


def test_roi_patterns_are_case_insensitive_globs() -> None:
    from medseg.io.rtstruct import match_rois

    names = ["GTV-1", "gtvp", "CTV", "Spinal Cord", "SPINALCORD", "GTV_primary "]
    assert match_rois(names, ["GTV", "GTVp", "GTV*"]) == ["GTV-1", "gtvp", "GTV_primary "]
    assert match_rois(names, ["Spinal Cord", "SpinalCord"]) == ["Spinal Cord", "SPINALCORD"]
    assert match_rois(names, ["PTV*"]) == []


def test_match_rois_moved_to_io_rtstruct() -> None:
    from medseg.io import rtstruct
    from medseg.training import datasets

    with pytest.warns(DeprecationWarning, match="medseg.io.rtstruct.match_rois"):
        assert datasets.match_rois is rtstruct.match_rois


def _patients(tmp_path: Path) -> Path:
    """pat_1..3 symlinked, plus a patient whose folder has the CT but no RT-STRUCT."""
    from tests.conftest import require_data

    source = require_data("lung-gtv-ct")
    root = tmp_path / "patients"
    root.mkdir()
    for name in ("pat_1", "pat_2", "pat_3"):
        (root / name).symlink_to(source / name, target_is_directory=True)
    ct_only = root / "pat_4"
    ct_only.mkdir()
    for path in (source / "pat_2").iterdir():
        if "_RS_" not in path.name:
            (ct_only / path.name).symlink_to(path)
    return root


def test_dicom_rtstruct_source_maps_labels_and_skips_incomplete_cases(tmp_path: Path) -> None:
    from medseg.io import dicom, rtstruct
    from medseg.training.datasets import load_dicom_rtstruct_folder

    root = _patients(tmp_path)
    dataset = load_dicom_rtstruct_folder(root, {1: ["GTV", "GTVp", "gtv*"]})
    assert [c.case_id for c in dataset.cases] == ["case_000", "case_001", "case_002"]
    assert [s.folder.name for s in dataset.skipped] == ["pat_4"]
    assert "no RT-STRUCT" in dataset.skipped[0].reason
    # the label map is the ROI GTV-1 as the RT-STRUCT reader rasterises it
    first = dataset.cases[0]
    image = dicom.load_series(root / "pat_1")
    reference = rtstruct.read(next((root / "pat_1").glob("*_RS_*")), image)["GTV-1"]
    np.testing.assert_array_equal(first.labels.array, reference.array)
    assert first.labels.geometry == first.image.geometry
    assert 300 < first.labels.array.sum() * np.prod(first.labels.geometry.spacing_mm) / 1000 < 420

    required = load_dicom_rtstruct_folder(root, {1: ["GTV*"], 2: ["Spinal Cord", "SpinalCord"]})
    assert required.cases == ()
    assert len(required.skipped) == 4
    assert all("label 2" in s.reason for s in required.skipped if s.folder.name != "pat_4")


def test_converted_cache_skips_dicom_and_follows_its_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import pydicom

    from medseg.training import datasets
    from tests.conftest import require_data

    root = tmp_path / "patients"
    shutil.copytree(require_data("lung-gtv-ct") / "pat_2", root / "pat_2")
    calls: list[Path] = []
    real = datasets.dicom.load_series

    def counting(folder: Path, *args: object, **kwargs: object) -> object:
        calls.append(Path(folder))
        return real(folder, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(datasets.dicom, "load_series", counting)
    cache = tmp_path / "cache"
    labels = {1: ["GTV*"]}
    first = datasets.load_dicom_rtstruct_folder(root, labels, cache_dir=cache, preprocess={"a": 1})
    assert len(calls) == 1 and len(list(cache.glob("*.npz"))) == 1
    second = datasets.load_dicom_rtstruct_folder(root, labels, cache_dir=cache, preprocess={"a": 1})
    assert len(calls) == 1  # read from the cache, not from DICOM
    np.testing.assert_array_equal(second.cases[0].image.array, first.cases[0].image.array)
    np.testing.assert_array_equal(second.cases[0].labels.array, first.cases[0].labels.array)
    assert second.cases[0].image.geometry == first.cases[0].image.geometry

    datasets.load_dicom_rtstruct_folder(root, labels, cache_dir=cache, preprocess={"a": 2})
    assert len(calls) == 2  # another preprocessing config
    datasets.load_dicom_rtstruct_folder(root, {1: ["GTV-1"]}, cache_dir=cache, preprocess={"a": 1})
    assert len(calls) == 3  # another label map
    ct = min(root.glob("pat_2/DCM_IMG_*"))
    ds = pydicom.dcmread(ct)
    ds.SeriesDescription = "edited"
    ds.save_as(ct)
    datasets.load_dicom_rtstruct_folder(root, labels, cache_dir=cache, preprocess={"a": 1})
    assert len(calls) == 4  # a source file changed


def test_cli_trains_a_fold_on_dicom_rtstruct_patients(tmp_path: Path) -> None:
    import mlflow

    root = _patients(tmp_path)
    text = (REPO / "configs" / "tiny.yaml").read_text()
    text = text.replace(
        "datalist: null",
        f"dicom_root: {root}\n  labels: {{1: [GTV, GTVp, 'GTV*']}}\n  num_folds: 3\n"
        f"  cache_dir: {tmp_path / 'cache'}",
    )
    text = text.replace("epochs: 6", "epochs: 1").replace(
        "samples_per_case: 4", "samples_per_case: 2"
    )
    text = text.replace("roi_size: [16, 32, 32]", "roi_size: [32, 96, 96]")
    db = tmp_path / "mlflow.db"
    text = text.replace("tracking_uri: null", f"tracking_uri: sqlite:///{db}")
    config = tmp_path / "lung.yaml"
    config.write_text(text)
    out = tmp_path / "out"

    result = CliRunner().invoke(app, ["train", str(config), "--out", str(out), "--fold", "0"])
    assert result.exit_code == 0, result.output
    folds = load_folds(out / "splits.json")
    assert folds == make_folds(["case_000", "case_001", "case_002"], num_folds=3, seed=0)
    assert (out / "fold_0" / "best.pt").is_file() and not (out / "fold_1").exists()
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3  # pat_4 (no RT-STRUCT) skipped
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("medseg-tiny").experiment_id])
    assert [r.info.run_name for r in runs] == ["medseg-tiny-fold0"]
    assert runs[0].data.params["data.labels.1"] == "GTV,GTVp,GTV*"


def test_decathlon_datalist_over_real_mr_and_ct_cases_trains(tmp_path: Path) -> None:
    """mr-tumour (NRRD, MR) and totalseg-example (NIfTI, CT) in one dataset.json, trained with
    canonical orientation, z-score intensities and foreground crop."""
    import nibabel as nib

    from medseg import geometry as geo
    from medseg.config import load_config
    from medseg.training.crossval import load_cases
    from medseg.training.patches import prepare_case
    from medseg.training.train import train
    from tests.conftest import require_data

    source = require_data("mr-tumour")
    totalseg = require_data("totalseg-example")
    # TotalSegmentator's class 5 (liver) as the label: the test writes the binary label map
    seg = nib.load(totalseg / "example_seg.nii.gz")
    liver = (np.asarray(seg.dataobj) == 5).astype(np.uint8)
    assert liver.sum() > 1000
    nib.save(nib.Nifti1Image(liver, seg.affine, seg.header), tmp_path / "liver.nii.gz")
    datalist = tmp_path / "dataset.json"
    datalist.write_text(
        json.dumps(
            {
                "training": [
                    *(
                        {
                            "image": str(source / f"{name}_image.nrrd"),
                            "label": str(source / f"{name}_label.nrrd"),
                        }
                        for name in ("brain1", "breast1")
                    ),
                    {
                        "image": str(totalseg / "example_ct_sm.nii.gz"),
                        "label": str(tmp_path / "liver.nii.gz"),
                    },
                ]
            }
        )
    )
    config = load_config(REPO / "configs" / "tiny.yaml")
    config = config.model_copy(
        update={
            "data": config.data.model_copy(update={"datalist": datalist}),
            "train": config.train.model_copy(update={"epochs": 1, "samples_per_case": 2}),
            # MR and CT together: a wide clip, then per-image z-scores over the body
            "preprocess": config.preprocess.model_copy(
                update={
                    "lower_hu": -900.0,
                    "upper_hu": 2000.0,
                    "orientation": "LPS",
                    "intensity": "zscore",
                    "crop_foreground": True,
                }
            ),
        }
    )
    cases = load_cases(config)
    assert sorted(cases) == ["training_000", "training_001", "training_002"]
    for case in cases.values():
        assert case.labels.array.sum() > 0
        prepared = prepare_case(case.image, case.labels, config)
        # the crop keeps every labelled voxel, and the intensities are z-scores
        assert np.count_nonzero(prepared.labels) == np.count_nonzero(case.labels.array)
        body = prepared.image[prepared.image > prepared.image.min()]
        assert abs(float(body.mean())) < 0.5 and 0.5 < float(body.std()) < 1.5
    # NIfTI and NRRD grids are stored RAS/LPS-flipped: the network sees them canonically
    ct = cases["training_002"].image
    assert not geo.canonical_reorientation(ct.geometry).is_identity
    result = train(
        config,
        [
            (cases["training_000"].image, cases["training_000"].labels),
            (ct, cases["training_002"].labels),
        ],
        [(cases["training_001"].image, cases["training_001"].labels)],
        tmp_path / "out",
        None,
    )
    assert result.best_val_dice is not None and 0.0 <= result.best_val_dice <= 1.0
    assert result.history[0].val_dice_per_label.keys() == {"tumour"}
