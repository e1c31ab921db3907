"""Training cases on the model's grid and intensities (medseg.training.patches.prepare_case),
for nnU-Net-style plans: intensity modes, padding with air, separate-z resampling, and an
anisotropic DynUNet trained from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.config import ExperimentConfig, load_config
from medseg.geometry import Geometry
from medseg.model import load_checkpoint
from medseg.preprocess import model_grid, normaliser, resample
from medseg.training.patches import prepare_case
from medseg.volume import SourceInfo, Volume, VolumeKind

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"

#: nnU-Net-style plans, as `medseg plan` writes them (values made up for the phantom).
MODES = {
    "window": {"intensity": "window"},
    "zscore": {"intensity": "zscore"},
    "clip_zscore": {"intensity": "clip_zscore", "intensity_mean": 90.0, "intensity_std": 70.0},
    "image_zscore": {"intensity": "image_zscore"},
}


def _config(preprocess: dict, **sections: dict) -> ExperimentConfig:
    config = load_config(TINY)
    data = config.model_dump()
    data["preprocess"].update(preprocess)
    for name, values in sections.items():
        data[name].update(values)
    return ExperimentConfig.model_validate(data)


def _thick_case(seed: int = 0, shape: tuple[int, int, int] = (7, 30, 28)) -> tuple[Volume, Volume]:
    """5 mm slices: air around a body (40 HU, noisy) holding a lesion (+160 HU), its mask."""
    rng = np.random.default_rng(seed)
    grid = Geometry(shape, (5.0, 0.9, 0.9), (-4.0, 12.0, 3.5))
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[1:-1, 4:-4, 3:-3] = rng.normal(40.0, 20.0, (shape[0] - 2, shape[1] - 8, shape[2] - 6))
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:5, 10:18, 9:17] = 1
    hu[labels == 1] += 160.0
    source = SourceInfo(series_instance_uid=f"1.2.826.0.1.{seed}")
    return Volume(hu, grid, VolumeKind.IMAGE, source), Volume(
        labels, grid, VolumeKind.LABELS, source
    )


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_small_volumes_are_padded_with_what_the_mode_makes_of_air(mode: dict) -> None:
    config = _config({**mode, "lower_hu": -150.0, "upper_hu": 350.0})
    image, labels = _thick_case()
    assert config.train.patch_size == (16, 32, 32)  # larger than the case on every axis
    prepared = prepare_case(image, labels, config)
    assert prepared.image.shape == prepared.labels.shape == (16, 32, 32)
    normalise = normaliser(np.asarray(image.array), config.preprocess)
    darkest = normalise(np.array([-1000.0], dtype=np.float32))[0]  # the air in the image
    padded = prepared.image[7:]
    np.testing.assert_array_equal(padded, darkest)
    np.testing.assert_array_equal(prepared.labels[7:], 0)
    np.testing.assert_array_equal(prepared.image[:7, :30, :28], normalise(image.array))


@pytest.mark.parametrize("mode", ["zscore", "image_zscore"])
def test_per_image_statistics_are_those_predict_measures(mode: str) -> None:
    """Cropping to the foreground and resampling to the model grid do not change the
    statistics: they are measured on the input image, as predict() measures them."""
    config = _config(
        {**MODES[mode], "spacing_mm": (2.5, 1.2, 1.2), "crop_foreground": True,
         "crop_margin_mm": 2.0},
        train={"patch_size": [4, 8, 8]},
        infer={"roi_size": [4, 8, 8]},
    )  # fmt: skip
    image, labels = _thick_case(1)
    prepared = prepare_case(image, labels, config)
    grid = model_grid(image.geometry, (2.5, 1.2, 1.2))
    on_grid = resample(image, grid).array
    from medseg.preprocess import foreground_box

    start, stop = foreground_box(
        resample(image, grid), resample(labels, grid), config.preprocess.lower_hu, 2.0
    )
    inside = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    assert prepared.image.shape == on_grid[inside].shape
    expected = normaliser(np.asarray(image.array), config.preprocess)(on_grid[inside])
    np.testing.assert_allclose(prepared.image, expected, rtol=1e-6, atol=1e-6)
    if mode == "image_zscore":  # over every voxel of the input, air included
        whole = np.asarray(image.array, dtype=np.float64)
        assert float(prepared.image.min()) == pytest.approx(
            (-1000.0 - whole.mean()) / whole.std(), rel=1e-5
        )


def test_separate_z_resamples_the_image_and_leaves_labels_and_grid_alone() -> None:
    image, labels = _thick_case(2)
    plain = _config({"spacing_mm": (1.5, 0.9, 0.9)})
    separate = _config({"spacing_mm": (1.5, 0.9, 0.9), "resample_separate_z": True})
    a, b = prepare_case(image, labels, plain), prepare_case(image, labels, separate)
    assert a.image.shape == b.image.shape
    np.testing.assert_array_equal(a.labels, b.labels)
    grid = model_grid(image.geometry, (1.5, 0.9, 0.9))
    expected = normaliser(np.asarray(image.array), separate.preprocess)(
        resample(image, grid, separate_z=True).array
    )
    n = grid.shape
    np.testing.assert_array_equal(b.image[: n[0], : n[1], : n[2]], expected)
    assert not np.array_equal(a.image, b.image)  # trilinear blends the 5 mm slices


@pytest.mark.parametrize("deep_supervision", [False, True], ids=["plain", "deep-supervision"])
def test_anisotropic_dynunet_trains_and_predicts(tmp_path: Path, deep_supervision: bool) -> None:
    """A plan for 5 mm slices end to end: per-axis strides and (1, 3, 3) kernels, clip_zscore,
    separate z, foreground crop; training (validation runs predict) and the checkpoint."""
    from medseg.infer import predict
    from medseg.training.train import train

    config = _config(
        {**MODES["clip_zscore"], "spacing_mm": (2.5, 1.8, 1.8), "resample_separate_z": True,
         "crop_foreground": True},
        model={
            "name": "dynunet", "channels": [4, 8, 16], "strides": [[1, 2, 2], [2, 2, 2]],
            "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
            "deep_supervision": deep_supervision, "num_res_units": 1,
        },
        train={"epochs": 2, "val_every": 2, "patch_size": [6, 16, 16], "samples_per_case": 2},
        infer={"roi_size": [6, 16, 16]},
    )  # fmt: skip
    assert config.model.downsampling_factor == (2, 4, 4)
    result = train(config, [_thick_case(3), _thick_case(4)], [_thick_case(5)], tmp_path, None)
    assert len(result.history) == 2 and np.isfinite(result.final_train_loss)
    assert result.best_val_dice is not None
    model = load_checkpoint(result.checkpoint_path)
    assert model.config == config
    image, _ = _thick_case(6)
    labels = predict(model, image)
    assert labels.geometry == image.geometry and labels.array.dtype == np.uint8
