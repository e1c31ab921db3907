"""Training augmentation: nnU-Net's set as configured, labels moving with the image, legacy
configs augmenting exactly as before."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from medseg.config import TrainConfig, load_config, parse_config
from medseg.errors import ConfigError
from medseg.training.augmentation import RandGammad, RandRotateScaled
from medseg.training.patches import augmentation, augmented

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
PATCH = (8, 32, 32)

#: every probability key of the nnU-Net set (not the legacy affine and intensity keys)
NNUNET_PROBABILITIES = (
    "augment_rotation_probability",
    "augment_scaling_probability",
    "augment_noise_probability",
    "augment_blur_probability",
    "augment_brightness_probability",
    "augment_contrast_probability",
    "augment_low_resolution_probability",
    "augment_gamma_probability",
    "augment_inverted_gamma_probability",
)
SPATIAL = ("augment_rotation_probability", "augment_scaling_probability")
INTENSITY = tuple(k for k in NNUNET_PROBABILITIES if k not in SPATIAL)


def _train(**values: Any) -> TrainConfig:
    return TrainConfig(epochs=1, patch_size=PATCH, **values)


def _nnunet(**values: Any) -> TrainConfig:
    """nnU-Net's values for an isotropic-enough patch, with ``values`` on top."""
    return _train(**{**TrainConfig.nnunet_defaults((16, 32, 32)), **values})


def _blob_patches(n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """An off-centre labelled box, its image a bright box on a noisy background."""
    rng = np.random.default_rng(7)
    labels = np.zeros((n, 1, *PATCH), dtype=np.int64)
    labels[:, :, 2:6, 4:14, 6:20] = 1
    images = (labels + rng.normal(0.0, 0.05, labels.shape)).astype(np.float32)
    return images, labels


def _legacy_augmentation(cfg: TrainConfig) -> Any:
    """augmentation() as it was before the nnU-Net keys (medseg 0.1), the reference."""
    from monai import transforms as mt

    keys = ["image", "label"]
    steps: list[Any] = [mt.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in cfg.augment_flip_axes]
    if cfg.augment_affine_probability > 0:
        angle = math.radians(cfg.augment_rotate_degrees)
        steps.append(
            mt.RandAffined(
                keys,
                prob=cfg.augment_affine_probability,
                rotate_range=(angle, angle, angle),
                scale_range=(cfg.augment_scale,) * 3,
                mode=("bilinear", "nearest"),
                padding_mode="border",
            )
        )
    if cfg.augment_intensity_probability > 0:
        p = cfg.augment_intensity_probability
        steps.append(mt.RandScaleIntensityd("image", factors=0.1, prob=p))
        steps.append(mt.RandShiftIntensityd("image", offsets=0.1, prob=p))
    if cfg.augment_noise_std > 0:
        steps.append(mt.RandGaussianNoised("image", prob=0.5, std=cfg.augment_noise_std))
    return mt.Compose(steps) if steps else None


LEGACY = {
    **{path.name: load_config(path).train for path in CONFIGS},
    "every legacy key on": _train(
        augment_flip_axes=(0, 1, 2),
        augment_affine_probability=1.0,
        augment_rotate_degrees=40.0,
        augment_scale=0.3,
        augment_intensity_probability=1.0,
        augment_noise_std=0.2,
    ),
}


@pytest.mark.parametrize("name", list(LEGACY), ids=list(LEGACY))
def test_existing_configs_augment_exactly_as_before(name: str) -> None:
    cfg = LEGACY[name].model_copy(update={"patch_size": PATCH})
    new, old = augmentation(cfg), _legacy_augmentation(cfg)
    assert (new is None) == (old is None)
    if new is None:
        return
    images, labels = _blob_patches()
    got = augmented(new, images, labels, np.random.default_rng(3))
    expected = augmented(old, images, labels, np.random.default_rng(3))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_default_is_no_augmentation() -> None:
    assert augmentation(_train()) is None


def test_every_probability_zero_is_no_augmentation() -> None:
    off = {key: 0.0 for key in NNUNET_PROBABILITIES}
    assert augmentation(_nnunet(augment_flip_axes=(), **off)) is None


@pytest.mark.parametrize(
    "transform",
    [
        RandRotateScaled(
            ["image", "label"],
            ("bilinear", "nearest"),
            spatial_dims=3,
            rotation_probability=0.0,
            max_degrees=180.0,
            scaling_probability=0.0,
            scale_range=(0.7, 1.4),
        ),
        RandGammad("image", prob=0.0, gamma=(0.7, 1.5), invert_image=True),
    ],
    ids=["rotate_scale", "gamma"],
)
def test_a_transform_with_probability_zero_is_the_identity(transform: Any) -> None:
    images, labels = _blob_patches(1)
    transform.set_random_state(seed=0)
    out = transform({"image": images[0], "label": labels[0]})
    np.testing.assert_array_equal(np.asarray(out["image"]), images[0])
    np.testing.assert_array_equal(np.asarray(out["label"]), labels[0])


GEOMETRIC = {
    "rotation 3d": {"augment_rotation_probability": 1.0},
    "scaling 3d": {"augment_scaling_probability": 1.0},
    "rotation and scaling in-plane": {
        "augment_rotation_probability": 1.0,
        "augment_scaling_probability": 1.0,
        "augment_in_plane": True,
        "augment_rotate_degrees": 180.0,
    },
    "flips": {"augment_flip_axes": (0, 1, 2)},
}


@pytest.mark.parametrize("name", list(GEOMETRIC), ids=list(GEOMETRIC))
def test_geometric_transforms_move_labels_with_the_image(name: str) -> None:
    off = {key: 0.0 for key in NNUNET_PROBABILITIES}
    cfg = _nnunet(**{"augment_flip_axes": (), **off, **GEOMETRIC[name]})
    images, labels = _blob_patches(4)
    out_images, out_labels = augmented(augmentation(cfg), images, labels, np.random.default_rng(1))
    assert out_labels.dtype == np.int64 and set(np.unique(out_labels)) <= {0, 1}
    assert out_images.shape == images.shape and out_images.dtype == np.float32
    moved = [not np.array_equal(o, i) for o, i in zip(out_labels, labels, strict=True)]
    assert any(moved)
    for image, label in zip(out_images, out_labels, strict=True):
        assert np.mean((image > 0.5) == (label == 1)) > 0.97
        if label.any():  # the labelled blob is where the image blob is
            image_centre = np.argwhere(image[0] > 0.5).mean(axis=0)
            label_centre = np.argwhere(label[0] == 1).mean(axis=0)
            assert np.abs(image_centre - label_centre).max() < 0.5


def test_intensity_transforms_never_touch_labels() -> None:
    cfg = _nnunet(
        augment_flip_axes=(),
        augment_rotation_probability=0.0,
        augment_scaling_probability=0.0,
        **{key: 1.0 for key in INTENSITY},
    )
    images, labels = _blob_patches(4)
    out_images, out_labels = augmented(augmentation(cfg), images, labels, np.random.default_rng(2))
    np.testing.assert_array_equal(out_labels, labels)
    assert all(not np.allclose(o, i) for o, i in zip(out_images, images, strict=True))
    assert np.isfinite(out_images).all()


def test_in_plane_augmentation_never_mixes_slices() -> None:
    off = {key: 0.0 for key in NNUNET_PROBABILITIES}
    on = {key: 1.0 for key in (*SPATIAL, "augment_low_resolution_probability")}
    cfg = _nnunet(
        augment_flip_axes=(),
        augment_in_plane=True,
        augment_rotate_degrees=180.0,
        **{**off, **on},
    )
    n_slices = PATCH[0]
    slice_value = np.arange(1, n_slices + 1).reshape(n_slices, 1, 1)
    labels = np.broadcast_to(slice_value, PATCH)[None, None].repeat(4, axis=0).astype(np.int64)
    images = labels.astype(np.float32)
    out_images, out_labels = augmented(augmentation(cfg), images, labels, np.random.default_rng(4))
    assert not np.array_equal(out_labels, labels)
    for k in range(n_slices):
        # each output slice holds only its own input slice's label (or background outside)
        assert set(np.unique(out_labels[:, 0, k])) <= {0, k + 1}
        assert out_images[:, 0, k].max() <= k + 1 + 1e-4


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("augment_rotation_probability", 1.5),
        ("augment_noise_probability", -0.1),
        ("augment_scale_range", [1.4, 0.7]),
        ("augment_scale_range", [0.0, 1.4]),
        ("augment_blur_sigma", [1.0]),
        ("augment_brightness_range", [0.75, float("inf")]),
        ("augment_low_resolution_zoom", [0.5, 1.5]),
        ("augment_gamma_range", [-0.7, 1.5]),
    ],
    ids=[
        "probability above 1",
        "negative probability",
        "reversed range",
        "zero scale",
        "one value",
        "infinite",
        "up-sampling zoom",
        "negative gamma",
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(key: str, value: Any) -> None:
    data = yaml.safe_load(CONFIGS[-1].read_text())  # tiny.yaml
    data["train"][key] = value
    with pytest.raises(ConfigError, match=rf"train\.{key}"):
        parse_config(yaml.safe_dump(data))


def test_in_plane_with_the_affine_augmentation_is_refused() -> None:
    with pytest.raises(ValueError, match="augment_in_plane needs augment_affine_probability 0"):
        _train(augment_in_plane=True, augment_affine_probability=0.2)


def test_nnunet_defaults_choose_in_plane_for_anisotropic_patches() -> None:
    flat, cube = TrainConfig.nnunet_defaults((16, 160, 160)), TrainConfig.nnunet_defaults(PATCH)
    thick = TrainConfig.nnunet_defaults((48, 144, 144))  # ratio exactly 3: not anisotropic
    assert (flat["augment_in_plane"], flat["augment_rotate_degrees"]) == (True, 180.0)
    assert (thick["augment_in_plane"], thick["augment_rotate_degrees"]) == (False, 30.0)
    assert cube["augment_in_plane"] is True  # 32 / 8 = 4


def test_rotation_and_scaling_draws_are_in_range_with_their_probabilities() -> None:
    transform = RandRotateScaled(
        ["image"],
        ("bilinear",),
        spatial_dims=3,
        rotation_probability=0.2,
        max_degrees=30.0,
        scaling_probability=0.2,
        scale_range=(0.7, 1.4),
    )
    transform.set_random_state(seed=0)
    angles, factors = [], []
    for _ in range(4000):
        transform.randomize()
        angles.append(transform.angles_rad)
        factors.append(transform.factor)
    angles_deg, factor = np.degrees(np.asarray(angles)), np.asarray(factors)
    rotated, scaled = np.any(angles_deg != 0, axis=1), factor != 1.0
    assert abs(rotated.mean() - 0.2) < 0.03 and abs(scaled.mean() - 0.2) < 0.03
    assert np.abs(angles_deg).max() <= 30.0 and np.abs(angles_deg[rotated]).max() > 25.0
    assert factor[scaled].min() >= 0.7 and factor[scaled].max() <= 1.4
    assert factor[scaled].min() < 0.75 and factor[scaled].max() > 1.35
    assert abs(np.mean(rotated & scaled) - 0.04) < 0.015  # drawn independently


def test_gamma_is_drawn_as_nnunet_draws_it() -> None:
    transform = RandGammad("image", prob=1.0, gamma=(0.7, 1.5), invert_image=False)
    transform.set_random_state(seed=0)
    gammas = []
    for _ in range(4000):
        transform.adjuster.randomize()
        gammas.append(transform.adjuster.gamma_value)
    gamma = np.asarray(gammas)
    assert gamma.min() >= 0.7 and gamma.max() <= 1.5
    assert abs(np.mean(gamma < 1.0) - 0.5) < 0.03  # MONAI's uniform draw gives 0.375


def test_intensity_draws_are_in_their_documented_ranges() -> None:
    cfg = _nnunet(**{key: 1.0 for key in NNUNET_PROBABILITIES})
    compose = augmentation(cfg)
    compose.set_random_state(seed=5)
    blur = next(t for t in compose.transforms if type(t).__name__ == "RandGaussianSmoothd")
    brightness = next(t for t in compose.transforms if type(t).__name__ == "RandScaleIntensityd")
    low_resolution = next(
        t for t in compose.transforms if type(t).__name__ == "RandSimulateLowResolutiond"
    )
    sigmas, multipliers, zooms = [], [], []
    for _ in range(500):
        blur.rand_smooth.randomize(None)
        sigmas.append((blur.rand_smooth.x, blur.rand_smooth.y, blur.rand_smooth.z))
        brightness.scaler.randomize(None)
        multipliers.append(1.0 + brightness.scaler.factor)
        low_resolution.sim_lowres_tfm.randomize(None)
        zooms.append(low_resolution.sim_lowres_tfm.zoom_factor)
    assert 0.5 <= np.min(sigmas) and np.max(sigmas) <= 1.0
    assert 0.75 <= np.min(multipliers) and np.max(multipliers) <= 1.25
    assert 0.5 <= np.min(zooms) and np.max(zooms) <= 1.0


def test_contrast_keeps_the_mean_and_range_and_noise_stays_within_its_std() -> None:
    from monai import transforms as mt

    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 1.0, (1, *PATCH)).astype(np.float32)
    contrast = mt.Compose(
        [t for t in augmentation(_nnunet(augment_contrast_probability=1.0)).transforms
         if type(t).__name__ == "RandScaleIntensityFixedMeand"]
    )  # fmt: skip
    noise = mt.Compose(
        [t for t in augmentation(_nnunet(augment_noise_probability=1.0)).transforms
         if type(t).__name__ == "RandGaussianNoised"]
    )  # fmt: skip
    for seed in range(20):
        contrast.set_random_state(seed=seed)
        noise.set_random_state(seed=seed)
        out = np.asarray(contrast({"image": image})["image"])
        assert out.min() >= image.min() - 1e-5 and out.max() <= image.max() + 1e-5
        inside = np.abs(image) < 1.0  # not clipped: (x - mean) scaled by one factor in range
        factor = np.median((out - image.mean())[inside] / (image - image.mean())[inside])
        assert 0.75 - 1e-4 <= factor <= 1.25 + 1e-4
        added = np.asarray(noise({"image": image})["image"]) - image
        assert added.std() <= 0.1 * 1.05


@pytest.mark.parametrize("in_plane", [False, True], ids=["3d", "in-plane"])
def test_the_whole_set_is_reproducible_from_the_seed(in_plane: bool) -> None:
    cfg = _nnunet(augment_in_plane=in_plane, **{key: 1.0 for key in NNUNET_PROBABILITIES})
    images, labels = _blob_patches(2)
    runs = [
        augmented(augmentation(cfg), images, labels, np.random.default_rng(s)) for s in (8, 8, 9)
    ]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0], runs[2][0])
