"""``medseg plan``: the nnU-Net raw layout as a datalist, the plan YAML (complete, commented,
parsed back to the same config), the CLI's outputs and refusals, and the CPU budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.config import parse_config
from medseg.errors import ConfigError
from medseg.geometry import Geometry
from medseg.io import nifti
from medseg.training.data import load_training_cases
from medseg.volume import Volume, VolumeKind


def _nnunet_raw(root: Path, n_cases: int = 3, *, seed: int = 0) -> Path:
    """A tiny nnU-Net v2 raw dataset: CT-like images with one cube label each."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n_cases):
        grid = Geometry((12, 32, 30 + i), (3.0, 0.8, 0.8), (0.0, 0.0, 0.0))
        image = rng.normal(40.0, 20.0, grid.shape).astype(np.int16)
        image[:, :4] = -1000
        labels = np.zeros(grid.shape, np.uint8)
        labels[4:8, 10:20, 10:18] = 1
        nifti.save(Volume(image, grid), root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        nifti.save(
            Volume(labels, grid, kind=VolumeKind.LABELS), root / "labelsTr" / f"case_{i:03d}.nii.gz"
        )
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
    }
    path = root / "dataset.json"
    path.write_text(json.dumps(dataset), encoding="utf-8")
    return path


def test_an_nnunet_raw_dataset_is_a_datalist(tmp_path: Path) -> None:
    path = _nnunet_raw(tmp_path / "Dataset001_toy")
    cases = load_training_cases(path)
    assert [c.case_id for c in cases] == ["training_000", "training_001", "training_002"]
    assert [c.image.array.shape[2] for c in cases] == [30, 31, 32]  # sorted by case name
    assert all(int(c.labels.array.max()) == 1 for c in cases)


def test_an_nnunet_raw_dataset_missing_an_image_is_named(tmp_path: Path) -> None:
    path = _nnunet_raw(tmp_path / "Dataset001_toy")
    (path.parent / "imagesTr" / "case_001_0000.nii.gz").unlink()
    with pytest.raises(ConfigError, match=r"case_001_0000\.nii\.gz: missing"):
        load_training_cases(path)


def test_an_nnunet_raw_dataset_of_two_channels_is_refused(tmp_path: Path) -> None:
    path = _nnunet_raw(tmp_path / "Dataset001_toy")
    raw = json.loads(path.read_text())
    raw["channel_names"] = {"0": "T1", "1": "T2"}
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="2 input channels"):
        load_training_cases(path)


def test_plan_section_resolves_the_fingerprint_beside_the_yaml(tmp_path: Path) -> None:
    from medseg.config import builtin_config_path, load_config

    text = builtin_config_path("tiny.yaml").read_text()
    text += "plan: {generated_by: medseg plan 0.1.0, fingerprint: fingerprint.json}\n"
    (tmp_path / "plan.yaml").write_text(text)
    config = load_config(tmp_path / "plan.yaml")
    assert config.plan is not None
    assert config.plan.fingerprint == (tmp_path / "fingerprint.json").resolve()
    assert config.plan.source == (tmp_path / "plan.yaml").resolve()
    assert "source" not in config.to_yaml()  # where it was read from is never written
    assert parse_config(config.to_yaml()).plan is not None
