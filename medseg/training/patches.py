"""Training cases as patches: each (image, labels) pair is checked, put on the model's grid and
intensities (as :func:`medseg.infer.predict` will see it), cropped to its foreground, and
sampled into patches with optional MONAI augmentation. Used by :mod:`medseg.training.train`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medseg.config import ExperimentConfig, TrainConfig
from medseg.errors import InputError
from medseg.preprocess import (
    foreground_box,
    model_grid,
    normaliser,
    reorient,
    require_finite_image,
    resample,
)
from medseg.volume import Volume, VolumeKind, require_same_geometry

__all__ = [
    "PreparedCase",
    "augmentation",
    "augmented",
    "check_pair",
    "prepare_case",
    "sample_patches",
]


@dataclass(frozen=True, slots=True)
class PreparedCase:
    """One training case ready for patch sampling (:func:`prepare_case`)."""

    image: NDArray[np.float32]  # as preprocess.intensity says, padded to at least the patch
    labels: NDArray[np.int64]
    foreground: NDArray[np.intp]  # flat indices of label > 0
    # class_balanced sampling: flat indices of each label present (else empty)
    by_label: tuple[NDArray[np.intp], ...] = ()


def check_pair(image: Volume, labels: Volume, config: ExperimentConfig) -> None:
    """Raise :class:`InputError` unless ``labels`` fits ``image`` and ``config.model.labels``."""
    where = image.source.describe()
    if image.kind is not VolumeKind.IMAGE or labels.kind is not VolumeKind.LABELS:
        raise InputError(
            f"{where}: expected an (image, labels) pair, got ({image.kind.value}, "
            f"{labels.kind.value})"
        )
    require_same_geometry(image, labels)
    n_labels = len(config.model.labels)
    found = np.unique(labels.array)
    unknown = found[(found < 0) | (found > n_labels)]
    if unknown.size:
        raise InputError(
            f"{labels.source.describe()}: label values {unknown.tolist()} are not in "
            f"model.labels (expected 0..{n_labels})"
        )


def prepare_case(image: Volume, labels: Volume, config: ExperimentConfig) -> PreparedCase:
    """Orientation, model grid, foreground crop, padding to a patch, intensity: as configured.

    Per-image intensity statistics (``"zscore"``, ``"image_zscore"``) are measured on the
    whole image before resampling and cropping: on the very voxels :func:`medseg.infer.predict`
    measures them on, so training and inference map an image alike.
    """
    check_pair(image, labels, config)
    require_finite_image(image, "training")
    pre = config.preprocess
    if pre.orientation == "LPS":  # the orientation predict() feeds the network
        image, labels = reorient(image)[0], reorient(labels)[0]
    normalise = normaliser(np.asarray(image.array), pre)
    if pre.spacing_mm is not None:  # the grid predict() feeds the network
        grid = model_grid(image.geometry, pre.spacing_mm)
        image = resample(image, grid, separate_z=pre.resample_separate_z)
        labels = resample(labels, grid)  # nearest: the same with separate z
    hu = np.asarray(image.array)
    label_array = np.asarray(labels.array, dtype=np.int64)
    if pre.crop_foreground:
        start, stop = foreground_box(image, labels, pre.lower_hu, pre.crop_margin_mm)
        inside = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        hu, label_array = hu[inside], label_array[inside]
    # Pad small volumes at the high end so that every patch fits, with air (what the intensity
    # mode maps air to: the window's lower end where it clips) and background.
    pad = [(0, max(0, p - s)) for p, s in zip(config.train.patch_size, hu.shape, strict=True)]
    if any(after for _, after in pad):
        hu = np.pad(np.asarray(hu, dtype=np.float32), pad, constant_values=normalise.air_hu)
        label_array = np.pad(label_array, pad, constant_values=0)
    foreground = np.flatnonzero(label_array > 0)
    by_label: tuple[NDArray[np.intp], ...] = ()
    if config.train.foreground_sampling == "class_balanced" and foreground.size:
        values = label_array.ravel()[foreground]
        order = np.argsort(values, kind="stable")
        starts = np.unique(values[order], return_index=True)[1]
        by_label = tuple(np.split(foreground[order], starts[1:]))
    return PreparedCase(
        image=np.ascontiguousarray(normalise(hu), dtype=np.float32),
        labels=np.ascontiguousarray(label_array),
        foreground=foreground,
        by_label=by_label,
    )


def sample_patches(
    cases: Sequence[PreparedCase], config: ExperimentConfig, rng: np.random.Generator
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """``samples_per_case`` patches per case, as ``(n, 1, slice, row, column)`` arrays."""
    patch = np.asarray(config.train.patch_size)
    images, labels = [], []
    for case in cases:
        shape = np.asarray(case.image.shape)
        for _ in range(config.train.samples_per_case):
            if case.foreground.size and rng.random() < config.train.foreground_fraction:
                voxels = (
                    case.by_label[rng.integers(len(case.by_label))]
                    if case.by_label
                    else (case.foreground)
                )
                flat = voxels[rng.integers(voxels.size)]
                centre = np.asarray(np.unravel_index(flat, case.image.shape))
            else:
                centre = rng.integers(0, shape)
            start = np.clip(centre - patch // 2, 0, shape - patch)
            window = tuple(slice(int(a), int(a + p)) for a, p in zip(start, patch, strict=True))
            images.append(case.image[window])
            labels.append(case.labels[window])
    return np.stack(images)[:, None], np.stack(labels)[:, None]


def augmentation(train_cfg: TrainConfig) -> Any:
    """The MONAI transforms the config asks for (a ``Compose``), or ``None``.

    Patches are ``{"image": (1, slice, row, column), "label": ...}``; labels move with the
    image (nearest) and no intensity transform touches them. Only the transforms whose
    probability is above 0 are composed, so a config without the nnU-Net keys draws exactly
    the random numbers, and makes exactly the patches, it made before they existed.
    """
    from monai import transforms as mt

    from medseg.training.augmentation import RandGammad, RandRotateScaled, SlicesAsChannelsd

    cfg = train_cfg
    keys = ["image", "label"]
    steps: list[Any] = [
        mt.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in cfg.augment_flip_axes
    ]
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
    if cfg.augment_rotation_probability > 0 or cfg.augment_scaling_probability > 0:
        spatial = RandRotateScaled(
            keys,
            ("bilinear", "nearest"),
            spatial_dims=2 if cfg.augment_in_plane else 3,
            rotation_probability=cfg.augment_rotation_probability,
            max_degrees=cfg.augment_rotate_degrees,
            scaling_probability=cfg.augment_scaling_probability,
            scale_range=cfg.augment_scale_range,
        )
        steps.append(SlicesAsChannelsd(keys, spatial) if cfg.augment_in_plane else spatial)
    if cfg.augment_intensity_probability > 0:
        probability = cfg.augment_intensity_probability
        steps.append(mt.RandScaleIntensityd("image", factors=0.1, prob=probability))
        steps.append(mt.RandShiftIntensityd("image", offsets=0.1, prob=probability))
    if cfg.augment_noise_std > 0 and cfg.augment_noise_probability > 0:
        steps.append(
            mt.RandGaussianNoised(
                "image", prob=cfg.augment_noise_probability, std=cfg.augment_noise_std
            )
        )
    if cfg.augment_blur_probability > 0:
        sigma = cfg.augment_blur_sigma
        steps.append(
            mt.RandGaussianSmoothd(
                "image",
                sigma_x=sigma,
                sigma_y=sigma,
                sigma_z=sigma,
                prob=cfg.augment_blur_probability,
            )
        )
    if cfg.augment_brightness_probability > 0:
        low, high = cfg.augment_brightness_range
        steps.append(
            mt.RandScaleIntensityd(
                "image", factors=(low - 1.0, high - 1.0), prob=cfg.augment_brightness_probability
            )
        )
    if cfg.augment_contrast_probability > 0:
        low, high = cfg.augment_contrast_range
        steps.append(
            mt.RandScaleIntensityFixedMeand(
                "image",
                factors=(low - 1.0, high - 1.0),
                fixed_mean=True,
                preserve_range=True,
                prob=cfg.augment_contrast_probability,
            )
        )
    if cfg.augment_low_resolution_probability > 0:
        in_plane = cfg.augment_in_plane
        low_resolution = mt.RandSimulateLowResolutiond(
            "image",
            prob=cfg.augment_low_resolution_probability,
            zoom_range=cfg.augment_low_resolution_zoom,
            downsample_mode="nearest-exact",  # as nnU-Net
            upsample_mode="bilinear" if in_plane else "trilinear",
        )
        steps.append(SlicesAsChannelsd(["image"], low_resolution) if in_plane else low_resolution)
    for probability, invert in (
        (cfg.augment_inverted_gamma_probability, True),
        (cfg.augment_gamma_probability, False),
    ):
        if probability > 0:
            steps.append(
                RandGammad(
                    "image", prob=probability, gamma=cfg.augment_gamma_range, invert_image=invert
                )
            )
    return mt.Compose(steps) if steps else None


def augmented(
    augment: Any, images: NDArray[np.float32], labels: NDArray[np.int64], rng: np.random.Generator
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Patches ``(n, 1, slice, row, column)`` after ``augment``, seeded from ``rng``."""
    augment.set_random_state(seed=int(rng.integers(2**31)))
    out_images, out_labels = [], []
    for image, label in zip(images, labels, strict=True):
        result = augment({"image": image, "label": label})
        out_images.append(np.asarray(result["image"], dtype=np.float32))
        out_labels.append(np.rint(np.asarray(result["label"])).astype(np.int64))
    return np.stack(out_images), np.stack(out_labels)
