"""Typed experiment configuration, loaded from one YAML file per experiment.

Every section is a frozen pydantic model with ``extra="forbid"``: a mistyped key fails with a
:class:`~medseg.errors.ConfigError` naming the file and the key's path (``train.epoch``).
Choices are ``Literal`` values; config holds values, never code.

Per-axis tuples (``patch_size``, ``roi_size``) are in array order ``(slice, row, column)``,
in voxels.

Example:
    >>> from pathlib import Path
    >>> config = load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml")
    >>> config.model.label_names, config.model.labels[0].type.value
    ({1: 'tumour'}, 'GTV')
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from medseg.errors import ConfigError
from medseg.structures import InterpretedType, Structure, structure_set

__all__ = [
    "BatchConfig",
    "DataConfig",
    "ExperimentConfig",
    "ExportConfig",
    "InferConfig",
    "IngestConfig",
    "LabelPostprocessConfig",
    "ModelConfig",
    "PlanInfo",
    "PostprocessConfig",
    "PreprocessConfig",
    "PrivacyConfig",
    "SeriesSelection",
    "TrackingConfig",
    "TrainConfig",
    "builtin_config_path",
    "capped_threads",
    "load_config",
    "parse_config",
]

#: Predicted label maps are uint8, so 255 foreground labels at most.
_MAX_LABELS = 255

PositiveInt = Annotated[StrictInt, Field(gt=0)]
#: A ``(low, high)`` range of finite positive floats (an augmentation's draw).
PositiveRange = tuple[
    Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)],
    Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)],
]
#: A per-axis size in voxels, array order ``(slice, row, column)``.
Shape3 = tuple[PositiveInt, PositiveInt, PositiveInt]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Section):
    """Where the training data is.

    Attributes:
        datalist: a Decathlon-style JSON file
            ``{"training": [{"image": ..., "label": ...}], "validation": [...]}`` whose paths
            are relative to the JSON file. A relative ``datalist`` in a YAML file is resolved
            against the YAML file's folder by :func:`load_config`. ``None`` when data paths
            come from the command line (e.g. ``medseg demo`` generates phantoms).
        num_folds: folds of ``medseg train --fold K`` / ``--folds all`` cross-validation
            over the training cases (split drawn from ``seed``).
        dicom_root: instead of ``datalist``: a folder with one sub-folder per patient, each
            holding a CT/MR series and an RT-STRUCT (``medseg.training.datasets``).
        labels: with ``dicom_root``: label value -> ROI name patterns (case-insensitive
            shell globs), e.g. ``{1: [GTV, GTVp, "GTV*"], 2: [Spinal Cord, SpinalCord]}``;
            the values must be ``model.labels``' values. A patient lacking a ROI for any label
            is reported and skipped.
        cache_dir: with ``dicom_root``: where converted cases are cached (``None``: no cache).
    """

    datalist: Path | None = None
    num_folds: Annotated[StrictInt, Field(ge=2)] = 5
    dicom_root: Path | None = None
    labels: dict[StrictInt, tuple[str, ...]] | None = None
    cache_dir: Path | None = None

    @field_serializer("datalist", "dicom_root", "cache_dir")
    def _path_as_str(self, value: Path | None) -> str | None:
        # model_dump() is logged and stored in checkpoints: primitives only.
        return None if value is None else str(value)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.datalist is not None and self.dicom_root is not None:
            raise ValueError("give either datalist or dicom_root, not both")
        if (self.dicom_root is None) != (self.labels is None):
            raise ValueError("dicom_root and labels (ROI name patterns) go together")
        if self.labels is not None and any(not p for p in self.labels.values()):
            raise ValueError(f"every label needs at least one ROI name pattern: {self.labels}")
        return self


class PreprocessConfig(_Section):
    """CT intensity window, mapped linearly onto ``[0, 1]`` and clipped, and the model's grid.

    Attributes:
        lower_hu: HU mapped to 0 (and everything below it). In every intensity mode it is
            also the air/body threshold: voxels at or below it are air (foreground crop,
            padding of small training volumes, windows inference skips).
        upper_hu: HU mapped to 1 (and everything above it).
        spacing_mm: the voxel spacing the network works at, array order
            ``(slice, row, column)``, in mm. Training resamples images (linear) and labels
            (nearest) to it; inference resamples the image to it and the prediction back onto
            the input grid. ``None`` (the default, and every config written before this field
            existed): the network sees each image at its own spacing.
        resample_separate_z: with ``spacing_mm``: resample an anisotropic image as nnU-Net
            does (``resample_data_or_seg`` with ``do_separate_z``): when the coarsest axis of
            the image's spacing, or else of ``spacing_mm``, is more than 3 times the finest
            (nnU-Net's ``ANISO_THRESHOLD``), the image is interpolated linearly within each
            plane across that axis first and then nearest-neighbour along it (nnU-Net's
            ``order_z=0``), so the network never sees intensities blended between slices
            several mm apart; labels are nearest-neighbour in both steps. nnU-Net's in-plane
            order is 3 (cubic spline) for images; medseg keeps linear, which never overshoots
            the HU range and is what inference uses to bring scores back. Grids that are not
            anisotropic are resampled as without the flag. ``False`` (the default):
            trilinear for images.
        orientation: ``"LPS"``: the network sees every image with slices towards S, rows
            towards P and columns towards L (a lossless transpose/flip of the stored voxels,
            :func:`medseg.geometry.canonical_reorientation`; predictions are mapped back
            exactly), so feet-first or sagittally stored scans look like the rest.
            ``"as_stored"`` (the default, and configs written before this field existed): the
            array order of the file.
        intensity: ``"window"`` (the default): ``[lower_hu, upper_hu]`` mapped onto
            ``[0, 1]``, for CT. ``"zscore"``: clipped to ``[lower_hu, upper_hu]``, then minus
            the image's mean and divided by its standard deviation (over the voxels above
            ``lower_hu``, the body, much as nnU-Net's ``ZScoreNormalization`` with
            ``use_mask_for_norm``); set a wide window for MR. ``"clip_zscore"``: nnU-Net's
            ``CTNormalization``: clipped to ``[lower_hu, upper_hu]`` (the planner sets the
            dataset's foreground 0.5 and 99.5 percentiles), then ``(x - intensity_mean) /
            intensity_std`` with the dataset's foreground statistics, the same for every
            image. ``"image_zscore"``: nnU-Net's ``ZScoreNormalization`` without a mask, for
            MR: each image minus its mean, divided by its standard deviation (at least
            1e-8), over all its voxels, not clipped.
        intensity_mean: ``"clip_zscore"`` only (and required there): the mean subtracted,
            in HU.
        intensity_std: ``"clip_zscore"`` only (and required there): the standard deviation
            divided by, in HU, > 0.
        crop_foreground: training only: each case is cut to the bounding box of its voxels
            above ``lower_hu`` and its labels, plus ``crop_margin_mm``, before patches are drawn
            (as nnU-Net crops to the non-zero region), so air costs neither memory nor patches.
            Inference runs only the windows that reach the body anyway
            (``infer.body_threshold_hu``).
        crop_margin_mm: margin around the foreground box.
    """

    lower_hu: StrictFloat
    upper_hu: StrictFloat
    orientation: Literal["as_stored", "LPS"] = "as_stored"
    intensity: Literal["window", "zscore", "clip_zscore", "image_zscore"] = "window"
    intensity_mean: Annotated[StrictFloat, Field(allow_inf_nan=False)] | None = None
    intensity_std: Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)] | None = None
    crop_foreground: StrictBool = False
    crop_margin_mm: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 10.0
    spacing_mm: (
        tuple[
            Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)],
            Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)],
            Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)],
        ]
        | None
    ) = None
    resample_separate_z: StrictBool = False

    @model_validator(mode="after")
    def _window_is_ordered(self) -> PreprocessConfig:
        if not (math.isfinite(self.lower_hu) and math.isfinite(self.upper_hu)):
            raise ValueError(f"window must be finite, got [{self.lower_hu}, {self.upper_hu}] HU")
        if self.upper_hu <= self.lower_hu:
            raise ValueError(
                f"upper_hu must be > lower_hu, got lower_hu={self.lower_hu}, "
                f"upper_hu={self.upper_hu}"
            )
        return self

    @model_validator(mode="after")
    def _statistics_match_the_mode(self) -> PreprocessConfig:
        given = [k for k in ("intensity_mean", "intensity_std") if getattr(self, k) is not None]
        if self.intensity == "clip_zscore":
            missing = [k for k in ("intensity_mean", "intensity_std") if k not in given]
            if missing:
                raise ValueError(
                    f"intensity 'clip_zscore' needs {' and '.join(missing)} (the dataset's "
                    "foreground mean and standard deviation, in HU)"
                )
        elif given:
            raise ValueError(
                f"{' and '.join(given)} apply only to intensity 'clip_zscore', "
                f"got intensity {self.intensity!r}"
            )
        if self.resample_separate_z and self.spacing_mm is None:
            raise ValueError("resample_separate_z needs spacing_mm (a model grid to resample to)")
        return self


#: A stride or kernel size: one value for every axis, or one per axis ``[slice, row, column]``.
AxisSizes = PositiveInt | Shape3


def _per_axis(value: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (value, value, value) if isinstance(value, int) else value


def _check_axis_sizes(values: Any, *, odd: bool) -> Any:
    """One-line errors for ``model.strides``/``model.kernel_sizes`` entries (pydantic's own
    for a union name each member tried)."""
    if not isinstance(values, (list, tuple)):
        return values  # pydantic reports the type
    what = "an odd positive int" if odd else "a positive int"
    for index, value in enumerate(values):
        axes = value if isinstance(value, (list, tuple)) else [value]
        fine = len(axes) in (1, 3) and (isinstance(value, (list, tuple)) == (len(axes) == 3))
        fine = fine and all(
            isinstance(a, int) and not isinstance(a, bool) and a > 0 and (a % 2 or not odd)
            for a in axes
        )
        if not fine:
            raise ValueError(
                f"entry {index} must be {what} or 3 of them [slice, row, column], got {value!r}"
            )
    return values


class ModelConfig(_Section):
    """A MONAI 3D U-Net with one input channel and ``1 + len(labels)`` output channels.

    Attributes:
        name: the architecture: ``"unet"`` (MONAI ``UNet``) or ``"dynunet"`` (MONAI
            ``DynUNet``, nnU-Net style: 3x3x3 kernels unless ``kernel_sizes`` says otherwise,
            instance norm, leaky ReLU).
        channels: feature channels per level, e.g. ``(8, 16, 32, 64)`` (``DynUNet``'s
            ``filters``).
        strides: downsampling stride between levels; ``len(channels) - 1`` entries, each an
            int (every axis) or 3 ints ``[slice, row, column]``, e.g.
            ``[[1, 2, 2], [2, 2, 2]]`` for a scan with thick slices (nnU-Net's
            ``pool_op_kernel_sizes`` without its first ``[1, 1, 1]``).
        kernel_sizes: ``dynunet`` only: convolution kernel size per level,
            ``len(channels)`` entries, each an odd int or 3 odd ints ``[slice, row, column]``
            (nnU-Net's ``conv_kernel_sizes``, e.g. ``[[1, 3, 3], [3, 3, 3], [3, 3, 3]]``).
            ``None`` (the default): 3 on every axis of every level.
        num_res_units: residual units per block (0 = plain convolutions); for ``dynunet``,
            any value > 0 selects residual blocks.
        labels: the structures (:class:`medseg.structures.Structure`), label values ``1..N``
            without gaps; 0 is background and is implicit. Output channel ``c`` predicts label
            value ``c``. Written as a map ``{1: GTV, 2: Parotid L}`` (types decided from the
            names, colours from the palette) or as a list of full structures
            ``[{label: 1, name: GTV, type: GTV, color: [255, 0, 0], standard_name: GTVp}]``;
            always stored in the list form.
        deep_supervision: ``dynunet`` only: during training the loss is also taken on the
            outputs of the ``deep_supervision_levels`` coarsest-but-one decoder levels
            (upsampled), weighted ``1, 1/2, 1/4, ...``; inference uses the full-resolution
            output only.
        deep_supervision_levels: number of extra supervised outputs (< ``len(channels) - 1``).
    """

    name: Literal["unet", "dynunet"] = "unet"
    channels: tuple[PositiveInt, ...]
    strides: tuple[AxisSizes, ...]
    kernel_sizes: tuple[AxisSizes, ...] | None = None
    num_res_units: Annotated[StrictInt, Field(ge=0)] = 2
    labels: tuple[Structure, ...]
    deep_supervision: StrictBool = False
    deep_supervision_levels: PositiveInt = 1

    @field_validator("strides", mode="before")
    @classmethod
    def _strides_are_sizes(cls, strides: Any) -> Any:
        return _check_axis_sizes(strides, odd=False)

    @field_validator("kernel_sizes", mode="before")
    @classmethod
    def _kernels_are_odd(cls, kernel_sizes: Any) -> Any:
        return kernel_sizes if kernel_sizes is None else _check_axis_sizes(kernel_sizes, odd=True)

    @field_validator("labels", mode="before")
    @classmethod
    def _structures(cls, labels: Any) -> tuple[Structure, ...]:
        if isinstance(labels, (str, bytes)) or not isinstance(labels, (Mapping, list, tuple)):
            raise ValueError(  # noqa: TRY004 - pydantic reports only ValueError
                "labels must be a map {1: GTV, ...} or a list of structures "
                f"[{{label: 1, name: GTV, type: GTV}}, ...], got {labels!r}"
            )
        if not labels:
            raise ValueError("at least one foreground label is needed, got none")
        return structure_set(labels, where="model.labels")

    @field_validator("labels")
    @classmethod
    def _labels_are_contiguous(cls, labels: tuple[Structure, ...]) -> tuple[Structure, ...]:
        if len(labels) > _MAX_LABELS:
            raise ValueError(
                f"at most {_MAX_LABELS} labels fit a uint8 label map, got {len(labels)}"
            )
        values = sorted(s.label for s in labels)
        expected = list(range(1, len(labels) + 1))
        if values != expected:
            raise ValueError(f"label values must be {expected} (0 is background), got {values}")
        return tuple(sorted(labels, key=lambda s: s.label))

    @property
    def label_names(self) -> dict[int, str]:
        """Label value -> structure name, in label order."""
        return {s.label: s.name for s in self.labels}

    @model_validator(mode="after")
    def _levels_match(self) -> ModelConfig:
        if len(self.channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {self.channels}")
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides needs len(channels) - 1 = {len(self.channels) - 1} values, "
                f"got {self.strides}"
            )
        if self.name == "dynunet" and len(self.channels) < 3:
            # MONAI's DynUNet needs an input block, a downsampling block and a bottleneck
            raise ValueError(
                f"name 'dynunet' needs at least 3 levels in channels, got {self.channels}"
            )
        if self.kernel_sizes is not None:
            if self.name != "dynunet":
                raise ValueError(f"kernel_sizes needs name 'dynunet', got {self.name!r}")
            if len(self.kernel_sizes) != len(self.channels):
                raise ValueError(
                    f"kernel_sizes needs len(channels) = {len(self.channels)} values, "
                    f"got {self.kernel_sizes}"
                )
            for level, (stride, kernel) in enumerate(
                zip(self.strides_by_axis, self.kernel_sizes_by_axis[1:], strict=True), 1
            ):
                if any(k < s - 1 for k, s in zip(kernel, stride, strict=True)):
                    # DynUNet pads (kernel - stride + 1) / 2: it must not be negative
                    raise ValueError(
                        f"kernel_sizes entry {level} {list(kernel)} must be at least "
                        f"strides entry {level - 1} {list(stride)} minus 1 on every axis"
                    )
        if self.deep_supervision:
            if self.name != "dynunet":
                raise ValueError(f"deep_supervision needs name 'dynunet', got {self.name!r}")
            if self.deep_supervision_levels >= len(self.channels) - 1:
                raise ValueError(
                    f"deep_supervision_levels must be < len(channels) - 1 = "
                    f"{len(self.channels) - 1}, got {self.deep_supervision_levels}"
                )
        return self

    @property
    def strides_by_axis(self) -> tuple[tuple[int, int, int], ...]:
        """``strides`` with every entry as ``(slice, row, column)``."""
        return tuple(_per_axis(s) for s in self.strides)

    @property
    def kernel_sizes_by_axis(self) -> tuple[tuple[int, int, int], ...]:
        """``kernel_sizes`` (3 where ``None``) with every entry as ``(slice, row, column)``."""
        kernels = self.kernel_sizes or (3,) * len(self.channels)
        return tuple(_per_axis(k) for k in kernels)

    @property
    def downsampling_factor(self) -> tuple[int, int, int]:
        """Product of the strides per axis ``(slice, row, column)``: every patch/ROI size
        must be a multiple of it along that axis."""
        along = [math.prod(s[axis] for s in self.strides_by_axis) for axis in range(3)]
        return (along[0], along[1], along[2])


class TrainConfig(_Section):
    """The training loop.

    Attributes:
        epochs: passes over the training cases.
        patch_size: training patch in voxels, array order ``(slice, row, column)``.
        batch_size: patches per optimiser step.
        samples_per_case: patches drawn from each training case per epoch.
        foreground_fraction: probability that a patch is centred on a foreground voxel
            (the rest are centred anywhere), as MONAI's ``RandCropByPosNegLabel``.
        foreground_sampling: how that foreground voxel is chosen: ``"voxel"`` (the default):
            any labelled voxel alike, so large structures get most patches;
            ``"class_balanced"``: first a label present in the case, each alike, then one of
            its voxels, as MONAI's ``RandCropByLabelClasses`` with equal ratios, so a 0.05 mL
            cochlea is a patch centre as often as a lung.
        learning_rate: peak learning rate of the optimiser.
        loss: MONAI loss on softmax outputs and one-hot labels, averaged over the batch:
            ``"dice_ce"`` = ``DiceCELoss``, ``"dice"`` = ``DiceLoss``, ``"dice_focal"`` =
            ``DiceFocalLoss``.
        loss_include_background: ``false``: the Dice term leaves out the background channel
            (MONAI ``include_background=False``), as nnU-Net's ``DC_and_CE_loss``
            (``do_bg=False``); cross-entropy still covers every class. With ``dice_focal``
            MONAI leaves the background out of the focal term too.
        loss_batch_dice: Dice sums over the whole batch before dividing (nnU-Net's
            ``batch_dice``, which its planner sets per configuration); ``false``: per patch,
            then averaged.
        val_every: validate every this many epochs (and always after the last one).
        device: ``"cpu"`` or ``"cuda"``.
        num_threads: torch intra-op threads (at most ``OMP_NUM_THREADS`` where it is set).
        optimizer: ``"adam"`` (the default), ``"adamw"`` or ``"sgd"`` (Nesterov momentum).
        weight_decay: L2 penalty (decoupled for AdamW).
        momentum: SGD momentum.
        lr_schedule: learning rate per epoch after warm-up: ``"constant"``, ``"poly"``
            (``(1 - t) ** 0.9`` as nnU-Net) or ``"cosine"`` (to 0), ``t`` being the fraction of
            post-warm-up epochs done.
        warmup_epochs: epochs of linear warm-up from ``learning_rate / (warmup_epochs + 1)``.
        grad_clip_norm: clip the global gradient norm to this value; ``None``: no clipping.
        precision: ``"float32"``; ``"bfloat16"``/``"float16"`` autocast (mixed precision:
            float32 weights and loss; float16 on CUDA only, with a gradient scaler; bfloat16
            on CUDA and on a CPU that computes it natively, AVX512-BF16 or AMX); ``"auto"``:
            bfloat16 on CUDA and on such a CPU, else float32.
        deterministic: with ``seed``, make training bit-reproducible on the same machine
            (``torch.use_deterministic_algorithms``; slower on CUDA).
        early_stopping_patience: stop after this many validations without a better mean
            Dice; ``None``: never stop early.
        time_limit_min: stop training once this many minutes have passed, within an epoch
            if need be (the clock is read after every step), then validate that last
            (possibly partial) epoch; ``None``: no limit.
            ``medseg plan`` sets it to a CPU plan's budget. The learning-rate schedule runs
            over ``epochs`` unless ``lr_schedule_by`` is ``"time"``.
        lr_schedule_by: what ``t`` of ``lr_schedule`` counts: ``"epochs"`` (the fraction of
            post-warm-up epochs done) or ``"time"`` (the larger of that and the fraction of
            ``time_limit_min`` spent, read after every epoch), so that a run cut short by its
            time limit still reaches the schedule's low learning rates; needs
            ``time_limit_min``. ``medseg plan`` sets ``"time"`` for a CPU plan.
        hd95: also compute HD95 (mm) per label at validation.
        augment_flip_axes: training patches are flipped along each of these array axes
            (0 = slice, 1 = row, 2 = column) with probability 0.5 (MONAI ``RandFlipd``);
            nnU-Net mirrors all three.
        augment_affine_probability: probability of a random rotation (up to
            ``augment_rotate_degrees`` about every axis) and scaling (by up to
            ``augment_scale``) of a patch (MONAI ``RandAffined``; labels nearest-neighbour).
        augment_rotate_degrees: largest rotation of the affine and the rotation
            augmentations, degrees.
        augment_scale: largest relative scaling of the affine augmentation.
        augment_intensity_probability: probability of a random intensity scaling and shift
            by up to 10 % of the window (MONAI ``RandScaleIntensityd``/``RandShiftIntensityd``).
        augment_noise_std: Gaussian noise is added with probability
            ``augment_noise_probability``, its standard deviation drawn from
            ``U(0, augment_noise_std)`` per patch (MONAI ``RandGaussianNoised``), in normalised
            intensity units (window units, or standard deviations with ``zscore``); 0 turns it
            off. nnU-Net: 0.1 (its ``noise_variance=(0, 0.1)`` is used as the standard
            deviation).
        augment_noise_probability: probability of the noise; 0.5 (configs written before
            this field existed), nnU-Net 0.1.
        augment_rotation_probability: probability of a rotation by angles drawn from
            ``U(-augment_rotate_degrees, augment_rotate_degrees)`` about each axis (about
            the slice axis 0 only with ``augment_in_plane``), independent of the scaling;
            nnU-Net 0.2 with 30 degrees, or 180 in-plane. Rotation and scaling are one
            resampling (MONAI ``Affine``): image linear, labels nearest, zeros (background)
            outside the patch, as nnU-Net pads.
        augment_scaling_probability: probability of a scaling by one factor for every axis
            (rows and columns only with ``augment_in_plane``) drawn from
            ``U(*augment_scale_range)``; nnU-Net 0.2.
        augment_scale_range: ``(low, high)``: a factor above 1 shows more of the patch's
            surroundings, so structures look smaller (nnU-Net's and MONAI's convention);
            nnU-Net ``(0.7, 1.4)``.
        augment_in_plane: rotation, scaling and simulated low resolution act within each
            slice only, the slices handled as channels so no slice is mixed with another:
            nnU-Net's ``do_dummy_2d_data_aug``, which it sets when
            ``max(patch_size[1:]) / patch_size[0] > 3``. Not with
            ``augment_affine_probability`` (which rotates about every axis).
        augment_blur_probability: probability of a Gaussian blur with a standard deviation
            drawn from ``U(*augment_blur_sigma)`` (voxels) for each axis (MONAI
            ``RandGaussianSmoothd``); nnU-Net 0.1 (0.2 per patch x 0.5 per channel, for
            medseg's one channel).
        augment_blur_sigma: ``(low, high)`` in voxels; nnU-Net ``(0.5, 1.0)``.
        augment_brightness_probability: probability of multiplying the patch by a factor
            drawn from ``U(*augment_brightness_range)`` (MONAI ``RandScaleIntensityd``);
            nnU-Net 0.15.
        augment_brightness_range: nnU-Net ``(0.75, 1.25)``.
        augment_contrast_probability: probability of scaling the patch about its mean by a
            factor drawn from ``U(*augment_contrast_range)``, then clipping to its former
            range (MONAI ``RandScaleIntensityFixedMeand``, ``preserve_range``); nnU-Net 0.15.
        augment_contrast_range: nnU-Net ``(0.75, 1.25)``.
        augment_low_resolution_probability: probability of resampling the patch down by a
            factor drawn from ``U(*augment_low_resolution_zoom)`` (nearest) and back up
            (linear), the same factor for every axis (rows and columns only with
            ``augment_in_plane``) (MONAI ``RandSimulateLowResolutiond``); nnU-Net 0.125
            (0.25 per patch x 0.5 per channel).
        augment_low_resolution_zoom: ``(low, high)`` within ``(0, 1]``; nnU-Net ``(0.5, 1.0)``.
        augment_gamma_probability: probability of a gamma transform of the patch rescaled
            to ``[0, 1]`` over its own range, then brought back to its former mean and
            standard deviation (MONAI ``RandAdjustContrastd``, ``retain_stats``); nnU-Net 0.3.
        augment_inverted_gamma_probability: the same on the negated patch (bright and dark
            swap roles; ``invert_image``), applied before the plain gamma; nnU-Net 0.1.
        augment_gamma_range: ``(low, high)``; when ``low < 1 < high``, gamma is drawn as
            nnU-Net draws it: half the time from ``U(low, 1)``, else from ``U(1, high)``;
            otherwise from ``U(low, high)``. nnU-Net ``(0.7, 1.5)``.

    With every augmentation off (the default) patches are used as drawn. The transforms run
    in nnU-Net's order (flips first: they commute with the rest in distribution): flips,
    affine, rotation/scaling, intensity, noise, blur, brightness, contrast, low resolution,
    inverted gamma, gamma. :meth:`nnunet_defaults` gives nnU-Net's values for a patch size.
    """

    epochs: PositiveInt
    patch_size: Shape3
    batch_size: PositiveInt = 2
    samples_per_case: PositiveInt = 4
    foreground_fraction: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.5
    foreground_sampling: Literal["voxel", "class_balanced"] = "voxel"
    learning_rate: Annotated[StrictFloat, Field(gt=0.0)] = 1e-3
    loss: Literal["dice_ce", "dice", "dice_focal"] = "dice_ce"
    loss_include_background: StrictBool = True
    loss_batch_dice: StrictBool = True
    val_every: PositiveInt = 1
    device: Literal["cpu", "cuda"] = "cpu"
    num_threads: PositiveInt = 2
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: Annotated[StrictFloat, Field(ge=0.0)] = 0.0
    momentum: Annotated[StrictFloat, Field(ge=0.0, lt=1.0)] = 0.99
    lr_schedule: Literal["constant", "poly", "cosine"] = "constant"
    warmup_epochs: Annotated[StrictInt, Field(ge=0)] = 0
    grad_clip_norm: Annotated[StrictFloat, Field(gt=0.0)] | None = None
    precision: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    deterministic: StrictBool = False
    early_stopping_patience: PositiveInt | None = None
    time_limit_min: Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)] | None = None
    lr_schedule_by: Literal["epochs", "time"] = "epochs"
    hd95: StrictBool = True
    augment_flip_axes: tuple[Literal[0, 1, 2], ...] = ()
    augment_affine_probability: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.0
    augment_rotate_degrees: Annotated[StrictFloat, Field(ge=0.0, le=180.0)] = 15.0
    augment_scale: Annotated[StrictFloat, Field(ge=0.0, lt=1.0)] = 0.1
    augment_intensity_probability: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.0
    augment_noise_std: Annotated[StrictFloat, Field(ge=0.0)] = 0.0
    augment_noise_probability: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.5
    augment_rotation_probability: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.0
    augment_scaling_probability: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.0
    augment_scale_range: PositiveRange = (0.7, 1.4)
    augment_in_plane: StrictBool = False
    augment_blur_probability: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.0
    augment_blur_sigma: PositiveRange = (0.5, 1.0)
    augment_brightness_probability: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.0
    augment_brightness_range: PositiveRange = (0.75, 1.25)
    augment_contrast_probability: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.0
    augment_contrast_range: PositiveRange = (0.75, 1.25)
    augment_low_resolution_probability: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.0
    augment_low_resolution_zoom: PositiveRange = (0.5, 1.0)
    augment_gamma_probability: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.0
    augment_inverted_gamma_probability: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.0
    augment_gamma_range: PositiveRange = (0.7, 1.5)

    @field_validator(
        "augment_scale_range",
        "augment_blur_sigma",
        "augment_brightness_range",
        "augment_contrast_range",
        "augment_low_resolution_zoom",
        "augment_gamma_range",
    )
    @classmethod
    def _ordered_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"needs (low, high) with low <= high, got {list(value)}")
        return value

    @field_validator("augment_low_resolution_zoom")
    @classmethod
    def _downsampling(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] > 1.0:
            raise ValueError(f"zoom factors must be at most 1 (down-sampling), got {list(value)}")
        return value

    @model_validator(mode="after")
    def _time_schedule_needs_a_limit(self) -> TrainConfig:
        if self.lr_schedule_by == "time" and self.time_limit_min is None:
            raise ValueError(
                "lr_schedule_by 'time' paces the schedule by time_limit_min, which is not set"
            )
        return self

    @model_validator(mode="after")
    def _in_plane_without_affine(self) -> TrainConfig:
        if self.augment_in_plane and self.augment_affine_probability > 0:
            raise ValueError(
                "augment_in_plane needs augment_affine_probability 0 (the affine augmentation "
                "rotates about every axis); use augment_rotation_probability and "
                "augment_scaling_probability"
            )
        return self

    @staticmethod
    def nnunet_defaults(patch_size: tuple[int, int, int]) -> dict[str, Any]:
        """nnU-Net v2's training defaults (``nnUNetTrainer``) for ``patch_size``, as keys.

        Loss (Dice without background + cross-entropy), SGD with Nesterov momentum 0.99,
        learning rate 0.01, weight decay 3e-5, poly schedule, gradient clipping at 12 and its
        augmentation set; in-plane augmentation (rotations up to 180 degrees) when
        ``max(patch_size[1:]) / patch_size[0] > 3``, else rotations up to 30 degrees about
        every axis; a third of the patches centred on a voxel of a label drawn from those
        present (``oversample_foreground_percent``). ``loss_batch_dice`` is left to the
        caller (nnU-Net's planner decides it), and so are ``epochs`` and ``batch_size``
        (nnU-Net: 1000 epochs of 250 steps; medseg's epoch is ``samples_per_case`` patches
        of every case).

        Example:
            >>> values = TrainConfig.nnunet_defaults((20, 192, 160))
            >>> values["augment_in_plane"], values["augment_rotate_degrees"]
            (True, 180.0)
            >>> config = TrainConfig(epochs=1, patch_size=(20, 192, 160), **values)
        """
        in_plane = max(patch_size[1:]) / patch_size[0] > 3
        return {
            "foreground_fraction": 0.33,
            "foreground_sampling": "class_balanced",
            "loss": "dice_ce",
            "loss_include_background": False,
            "optimizer": "sgd",
            "learning_rate": 1e-2,
            "momentum": 0.99,
            "weight_decay": 3e-5,
            "lr_schedule": "poly",
            "warmup_epochs": 0,
            "grad_clip_norm": 12.0,
            "augment_flip_axes": (0, 1, 2),
            "augment_affine_probability": 0.0,
            "augment_rotation_probability": 0.2,
            "augment_rotate_degrees": 180.0 if in_plane else 30.0,
            "augment_scaling_probability": 0.2,
            "augment_scale_range": (0.7, 1.4),
            "augment_in_plane": in_plane,
            "augment_intensity_probability": 0.0,
            "augment_noise_std": 0.1,
            "augment_noise_probability": 0.1,
            "augment_blur_probability": 0.1,
            "augment_blur_sigma": (0.5, 1.0),
            "augment_brightness_probability": 0.15,
            "augment_brightness_range": (0.75, 1.25),
            "augment_contrast_probability": 0.15,
            "augment_contrast_range": (0.75, 1.25),
            "augment_low_resolution_probability": 0.125,
            "augment_low_resolution_zoom": (0.5, 1.0),
            "augment_gamma_probability": 0.3,
            "augment_inverted_gamma_probability": 0.1,
            "augment_gamma_range": (0.7, 1.5),
        }


class InferConfig(_Section):
    """Sliding-window inference (``medseg.infer``), with the windows placed as MONAI's
    ``sliding_window_inference`` places them.

    Every field but ``roi_size`` has a default, so configs and checkpoints written before a
    field existed keep loading.

    Attributes:
        roi_size: window in voxels, array order ``(slice, row, column)``.
        overlap: fraction of overlap between windows, in ``[0, 1)``.
        sw_batch_size: windows per forward pass.
        blend: how overlapping windows are combined (MONAI's importance maps).
        flip_tta: test-time augmentation: the logits are also computed on the image flipped
            along every non-empty combination of these array axes (0 = slice, 1 = row,
            2 = column) and averaged; ``()`` (default) runs the plain image only. Costs
            ``2 ** len(flip_tta)`` times the network time.
        body_threshold_hu: of the windows MONAI would place on the whole image, only those
            that reach into the bounding box of voxels above this value (the body; the CT
            table too), grown by ``body_margin_mm``, are run; voxels no window covers are
            background. Each window that runs sees the same input as MONAI's, so this
            changes no logit. ``None`` tiles the whole image. Any voxel above the threshold
            anywhere in the image is inside the box, so foreground is never cropped away
            unless it is air. Windows whose every voxel is at or below
            ``preprocess.lower_hu`` are not run either (background).
        body_margin_mm: margin added to the body box on every side, in mm.
        backend: ``"torch"`` runs the network as is (on its device); ``"onnxruntime"`` and
            ``"openvino"`` run an ONNX export of it on the CPU.
        precision: arithmetic of the network: ``"auto"`` (the default: the fastest
            precision this machine computes natively that the model's checkpoint records as
            verified against float32, else float32; :mod:`medseg.precision`), ``"float32"``,
            or autocast to ``"bfloat16"``/``"float16"`` unverified (torch; OpenVINO's
            inference precision hint). ONNX Runtime always computes in float32.
        num_threads: intra-op threads for the network (torch, ONNX Runtime, OpenVINO), at
            most ``OMP_NUM_THREADS`` where it is set; ``None`` keeps torch's setting and lets
            the runtimes choose.
        channels_last: run torch convolutions in ``channels_last_3d`` memory format (faster
            on CPU).
    """

    roi_size: Shape3
    overlap: Annotated[StrictFloat, Field(ge=0.0, lt=1.0)] = 0.25
    sw_batch_size: PositiveInt = 2
    blend: Literal["gaussian", "constant"] = "gaussian"
    flip_tta: tuple[Literal[0, 1, 2], ...] = ()
    body_threshold_hu: Annotated[StrictFloat, Field(allow_inf_nan=False)] | None = -500.0
    body_margin_mm: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 10.0
    backend: Literal["torch", "onnxruntime", "openvino"] = "torch"
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    num_threads: PositiveInt | None = None
    channels_last: StrictBool = True

    @field_validator("flip_tta")
    @classmethod
    def _distinct_axes(cls, axes: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(axes)) != len(axes):
            raise ValueError(f"flip_tta axes must be distinct, got {list(axes)}")
        return axes


class TrackingConfig(_Section):
    """MLflow tracking.

    Attributes:
        tracking_uri: MLflow tracking URI. ``None``: the environment variable
            ``MLFLOW_TRACKING_URI`` if set, else a local store ``sqlite:///mlflow.db`` (with
            artifacts under ``./mlruns``) in the working directory.
        experiment: MLflow experiment name.
        registered_model_name: register each trained model under this name (``None``: don't).
    """

    tracking_uri: str | None = None
    experiment: Annotated[str, Field(min_length=1)] = "medseg"
    registered_model_name: Annotated[str, Field(min_length=1)] | None = None


class SeriesSelection(_Section):
    """Which DICOM image series to load from a folder that holds several.

    ``medseg.io.dicom.select_series`` applies the filters in order (kind, modality,
    min_slices, localizer, descriptions), then ``prefer``, then ``require``. Only CT/MR image
    volumes are ever candidates; RT-STRUCT, RT plan/dose, SR and other images are not.

    Attributes:
        modalities: accepted Modality values.
        min_slices: fewest slices (frames) a series must have.
        exclude_localizers: drop series whose ImageType contains ``LOCALIZER`` or ``SCOUT``.
        include_description: keep only series whose SeriesDescription matches this regular
            expression (``re.search``; case-sensitive unless it starts with ``(?i)``).
        exclude_description: drop series whose SeriesDescription matches this expression.
        prefer: among the series left, keep only the best: ``"thinnest"`` slice spacing or
            ``"most_slices"``; ``None`` keeps them all.
        require: ``"exactly_one"``: more than one series left is an error that lists them;
            ``"first"``: take the first (by ``prefer``, then SeriesNumber, then UID).
    """

    modalities: tuple[Literal["CT", "MR"], ...] = ("CT", "MR")
    min_slices: PositiveInt = 1
    exclude_localizers: StrictBool = True
    include_description: str | None = None
    exclude_description: str | None = None
    prefer: Literal["thinnest", "most_slices"] | None = None
    require: Literal["exactly_one", "first"] = "exactly_one"

    @field_validator("modalities")
    @classmethod
    def _some_modalities(cls, modalities: tuple[str, ...]) -> tuple[str, ...]:
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be non-empty and unique, got {list(modalities)}")
        return modalities

    @field_validator("include_description", "exclude_description")
    @classmethod
    def _is_a_regex(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return pattern


class IngestConfig(_Section):
    """What to do with DICOM inputs that cannot be used exactly as stored, and how large an
    image any loader (DICOM, NIfTI, NRRD, SEG) may read.

    Every default refuses (a named error); a non-default value repairs explicitly and warns,
    naming the slices or the angle. Duplicate positions, mixed orientations and mixed pixel
    spacings are always errors.

    Attributes:
        irregular_slices: uneven slice spacing or missing slices: ``"error"``, or
            ``"resample"`` onto a uniform grid along the slice normal (linear interpolation
            between the two nearest slices; slices on the grid keep their values).
        gantry_tilt: slices not stacked along their normal: ``"error"``, or ``"resample"``
            onto an orthogonal grid (each slice plane kept, in-plane shift interpolated).
        max_interpolated_slices: with ``irregular_slices: resample``, a gap of more than this
            many missing slices in a row is still a ``MissingSliceError``.
        unplaced_contours: RT-STRUCT contours whose slice or frame is not in the reference
            series, or that lie outside it: ``"error"`` (a ``MissingReferenceError`` listing
            them), or ``"skip"`` them with a warning and import the rest.
        max_voxels: largest image a file or series may declare (slices x rows x columns,
            from its header), checked before any pixel is read: more is a
            ``ResourceLimitError``. The default, 2**29 = 2048 x 512 x 512 (5.4e8), admits
            every real CT (a whole-body CT at 0.5 mm slices is about 2000 x 512 x 512) and
            refuses a 1e9-voxel header at once. It is sized for a 24 GiB, 2-core machine:
            ``medseg predict`` of a DICOM CT measured about 15 bytes per voxel beyond a
            0.7 GB process (8 GiB at the limit), and a scaled NIfTI's float64 adds 6 more
            (11 GiB, estimated); twice the limit would not fit. It is a fixed number, not a share of
            the machine's memory, so a config loads the same scans on every machine; raise
            it in the config on a larger one.
        max_bytes: largest array (bytes) that loading an image may allocate for it: voxels
            x the larger of the stored and the loaded bytes per voxel (float32 for
            rescaled or resampled DICOM, float64 for scaled NIfTI); more is a
            ``ResourceLimitError``. Default 4 GiB: ``max_voxels`` as float64, the largest
            array loading makes. A deflated DICOM file may inflate to this plus its header
            (``medseg.io.dicom.DEFLATED_MAX_BYTES``, fixed at the default).
    """

    irregular_slices: Literal["error", "resample"] = "error"
    gantry_tilt: Literal["error", "resample"] = "error"
    max_interpolated_slices: PositiveInt = 2
    unplaced_contours: Literal["error", "skip"] = "error"
    max_voxels: PositiveInt = 2**29
    max_bytes: PositiveInt = 4 * 2**30


class BatchConfig(_Section):
    """Batch runs over many cases (``medseg batch``, ``medseg pacs run``).

    Attributes:
        fingerprint: what identifies a case's input files in the batch ledger: ``"stat"``:
            each file's path relative to the input root, size and modification time (cheap; a
            copy of the tree with new times runs again); ``"content"``: a SHA-256 of every
            file's bytes (reads every file once more).
        cpus_per_case: CPUs each case reserves with the Ray executor (its task's
            ``num_cpus``).
        gpus_per_case: GPUs each case reserves with the Ray executor (its task's
            ``num_gpus``; a fraction lets cases share a GPU).
        case_timeout_s: the longest one case may run, in seconds, counted from when its
            worker (with the model loaded) starts it; a case still running then fails with
            ``CaseTimeoutError`` and the batch goes on. ``None`` (default): no limit, because
            a fair limit depends on the scanner, the model and the machine. Only a process can
            be stopped safely mid-case, so with a limit the ``local`` executor runs its cases
            in one worker process (as ``pool`` with one worker); the Ray executor does not
            apply it.
        ledger_timeout_s: how long, in seconds, to wait for ``ledger.sqlite`` while another
            process holds it locked (e.g. someone reading it with ``sqlite3``) before the run
            stops with an error naming the file.
    """

    fingerprint: Literal["stat", "content"] = "stat"
    cpus_per_case: Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    gpus_per_case: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    case_timeout_s: Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)] | None = None
    ledger_timeout_s: Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)] = 30.0


class PrivacyConfig(_Section):
    """What logs and records may name (see ``medseg.privacy``).

    Attributes:
        log_identifiers: ``false`` (default): logs, progress output, MLflow, error messages
            in the ledger and ``summary.csv`` name cases by pseudonym (``case-<salted
            hash>``, ``case_000``) only, never by input folder (hospital exports often name
            folders after the patient). ``true``: also log each case's input folder, and
            skipped training patients by folder, to map pseudonyms back while debugging,
            and show SeriesDescription (free text that clinics fill with patient names) in
            messages, the batch summaries and the QA page. ``medseg batch``, ``pacs run`` and
            ``pacs listen`` take this from ``--config`` only, never from a model's own config.
    """

    log_identifiers: StrictBool = False


class LabelPostprocessConfig(_Section):
    """Clean-up of one label's mask; the steps run in the order listed here.

    Attributes:
        min_component_volume_ml: remove connected components smaller than this volume (mL,
            from the grid's voxel volume, so the rule means the same at any resolution);
            0 keeps every component.
        keep_largest_component: then keep only the largest remaining component (for organs
            that are one piece; not for tumours, which may be several lesions).
        fill_holes: then fill enclosed background: ``"none"``; ``"3d"``: background not
            face-connected to the volume's border; ``"slice"``: the same in 2D in each slice
            (array axis 0, axial on an axial scan), which also closes tunnels that run across
            slices. Only background voxels are filled, never another label.
    """

    min_component_volume_ml: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 0.0
    keep_largest_component: StrictBool = False
    fill_holes: Literal["none", "3d", "slice"] = "none"

    @property
    def is_noop(self) -> bool:
        """True if this rule leaves every mask unchanged."""
        return (
            self.min_component_volume_ml == 0.0
            and not self.keep_largest_component
            and self.fill_holes == "none"
        )


class PostprocessConfig(_Section):
    """Per-label clean-up of predicted label maps (``medseg.postprocess.apply_postprocess``).

    The default is no post-processing, so configs without this section behave as before.

    Attributes:
        connectivity: neighbourhood that joins voxels into components: 6 (faces), 18 (and
            edges) or 26 (and corners).
        default: the rule for every label value not covered by ``labels`` or ``types``.
        labels: label value -> rule, for labels that need their own.
        types: RT ROI Interpreted Type -> rule for every structure of that type not listed
            in ``labels``, e.g. ``{ORGAN: {keep_largest_component: true}}`` (an organ is one
            piece) while targets, which may be several lesions, keep ``default``.
    """

    connectivity: Literal[6, 18, 26] = 26
    default: LabelPostprocessConfig = LabelPostprocessConfig()
    labels: dict[StrictInt, LabelPostprocessConfig] = Field(default_factory=dict)
    types: dict[InterpretedType, LabelPostprocessConfig] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _foreground_labels(
        cls, labels: dict[int, LabelPostprocessConfig]
    ) -> dict[int, LabelPostprocessConfig]:
        bad = sorted(value for value in labels if value < 1)
        if bad:
            raise ValueError(f"label values must be >= 1 (0 is background), got {bad}")
        return labels

    def rule_for(
        self, label: int, interpreted_type: InterpretedType | None = None
    ) -> LabelPostprocessConfig:
        """The rule that applies to ``label``, a structure of ``interpreted_type``."""
        if label in self.labels:
            return self.labels[label]
        if interpreted_type is not None and interpreted_type in self.types:
            return self.types[interpreted_type]
        return self.default


class ExportConfig(_Section):
    """How predictions become DICOM RT-STRUCT contours (``medseg predict``, ``medseg batch``).

    Attributes:
        contours: ``"voxel_edges"`` (default) traces each slice's label mask on voxel
            boundaries, so a planning system's rasterisation gives back exactly the predicted
            voxels. ``"subvoxel"`` traces the 0.5 iso-line of the model's probabilities
            instead: smooth outlines whose rasterised volume agrees with the mask within a few
            percent, not exactly.
        tolerance_mm: largest distance a simplified contour may deviate from the traced one.
        empty_rois: a label the model did not find is left out of the RT-STRUCT
            (``"omit"``, the default: its StructureSetDescription and ``volumes.json`` say
            which) or written as a ROI without contours (``"keep"``: valid DICOM, but rt-utils
            cannot read such a structure set); both warn. When no structure is found at all,
            no RT-STRUCT (and no SEG) is written under ``"omit"``: DICOM needs one ROI.
    """

    contours: Literal["voxel_edges", "subvoxel"] = "voxel_edges"
    tolerance_mm: Annotated[StrictFloat, Field(ge=0.0, allow_inf_nan=False)] = 0.1
    empty_rois: Literal["keep", "omit"] = "omit"


class PlanInfo(_Section):
    """Where a planned experiment came from: ``medseg plan`` writes this section, training
    logs the plan's YAML and its fingerprint as MLflow artifacts (``plan/``).

    Attributes:
        generated_by: the medseg version that planned it, e.g. ``"medseg plan 0.1.0"``.
        fingerprint: the dataset fingerprint (``fingerprint.json`` beside the YAML; a relative
            path is resolved against the YAML file's folder by :func:`load_config`).
        device: the device planned for.
        gpu_memory_gb: the GPU memory target of nnU-Net's patch and batch rules.
        time_budget_min: on a CPU: the training time the plan was scaled to fit.
        source: the YAML file the config was loaded from (set by :func:`load_config`, never
            written).
    """

    generated_by: Annotated[str, Field(min_length=1)]
    fingerprint: Path | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    gpu_memory_gb: Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)] | None = None
    time_budget_min: Annotated[StrictFloat, Field(gt=0.0, allow_inf_nan=False)] | None = None
    source: Path | None = Field(default=None, exclude=True)

    @field_serializer("fingerprint")
    def _path_as_str(self, value: Path | None) -> str | None:
        return None if value is None else str(value)


#: Array axes by name, for messages.
_AXIS_NAMES = ("slice", "row", "column")


class ExperimentConfig(_Section):
    """One experiment: everything needed to train a model and to apply it.

    The config is stored inside every checkpoint, so a model is always applied with the
    intensity window and label names it was trained with.
    """

    seed: StrictInt
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig
    model: ModelConfig
    train: TrainConfig
    infer: InferConfig
    tracking: TrackingConfig = TrackingConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    export: ExportConfig = ExportConfig()
    series_selection: SeriesSelection = SeriesSelection()
    batch: BatchConfig = BatchConfig()
    ingest: IngestConfig = IngestConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    plan: PlanInfo | None = None

    @model_validator(mode="after")
    def _sizes_fit_the_network(self) -> ExperimentConfig:
        factor = self.model.downsampling_factor
        sizes = {"train.patch_size": self.train.patch_size, "infer.roi_size": self.infer.roi_size}
        for where, size in sizes.items():
            for axis, (n, f) in enumerate(zip(size, factor, strict=True)):
                if n % f:
                    raise ValueError(
                        f"{where} must be a multiple of the product of model.strides "
                        f"{list(factor)} in every axis, got {list(size)}: {n} along axis "
                        f"{axis} ({_AXIS_NAMES[axis]}) is not a multiple of {f}"
                    )
        return self

    def to_yaml(self) -> str:
        """The resolved config as YAML (what is logged to MLflow); :func:`parse_config` reads it."""
        return yaml.safe_dump(_lists(self.model_dump()), sort_keys=False, default_flow_style=None)


def _lists(value: Any) -> Any:
    """Tuples -> lists, recursively (YAML's safe dumper has no tuples)."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# loading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.2) and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML follows YAML 1.1, where a float needs a dot: "1e-3" would be the string "1e-3".
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<top level>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key")
        elif item["type"] == "missing" and item["loc"] and isinstance(item["loc"][-1], int):
            parent = ".".join(str(part) for part in item["loc"][:-1])
            lines.append(f"  {parent}: too few values, got {item['input']!r}")
        elif item["type"] == "missing":
            lines.append(f"  {where}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"  {where}: {message} (got {item['input']!r})")
    return f"{source}: invalid config:\n" + "\n".join(lines)


def parse_config(text: str, source: str = "<string>") -> ExperimentConfig:
    """Parse YAML text into an :class:`ExperimentConfig`.

    Args:
        text: the YAML document.
        source: what to name in error messages (usually the file path).

    Raises:
        ConfigError: on invalid YAML, a duplicate or unknown key, a wrong type or value.
    """
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from exc


def load_config(path: Path | str) -> ExperimentConfig:
    """Load an experiment config from a YAML file.

    Relative data paths (``data.datalist``, ``data.dicom_root``, ``data.cache_dir``) are
    resolved against the YAML file's folder, so a config works from any working directory.

    Raises:
        ConfigError: if the file cannot be read, or on any problem :func:`parse_config` finds.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a YAML text file (byte {exc.start} is not UTF-8: "
            f"{exc.object[exc.start : exc.start + 1]!r}); save the config as UTF-8"
        ) from exc
    config = parse_config(text, source=str(path))
    updates = {
        key: (path.parent / value).resolve()
        for key in ("datalist", "dicom_root", "cache_dir")
        if (value := getattr(config.data, key)) is not None and not value.is_absolute()
    }
    if updates:
        config = config.model_copy(update={"data": config.data.model_copy(update=updates)})
    if config.plan is not None:
        plan_updates: dict[str, Path] = {"source": path.resolve()}
        fingerprint = config.plan.fingerprint
        if fingerprint is not None and not fingerprint.is_absolute():
            plan_updates["fingerprint"] = (path.parent / fingerprint).resolve()
        config = config.model_copy(update={"plan": config.plan.model_copy(update=plan_updates)})
    return config


def capped_threads(requested: int) -> int:
    """``requested`` threads (a config's ``num_threads``), at most the environment's
    ``OMP_NUM_THREADS`` where that is set to a positive integer: the allocation a scheduler
    (Slurm, Kubernetes) or the user gave this process, so that several medseg processes on
    one machine (batch workers, test workers) do not each start more threads than they
    have cores, which with OpenMP's spinning threads costs far more than it gains."""
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return min(requested, int(raw))
    return requested


def builtin_config_path(name: str) -> Path:
    """Path of an experiment YAML shipped with medseg (``demo.yaml``, ``tiny.yaml``).

    Installed wheels carry the repository's ``configs/`` folder as the ``medseg.configs``
    package; in a source checkout run from the repository root (where the ``medseg`` folder
    shadows the installed mapping) it is the repository's ``configs/`` folder itself.

    Raises:
        ConfigError: if there is no such built-in config.
    """
    from importlib.resources import files

    try:
        path = Path(str(files("medseg.configs") / name))
    except ModuleNotFoundError:
        path = Path(__file__).resolve().parents[1] / "configs" / name
    if not path.is_file():
        raise ConfigError(f"no built-in config named {name!r} (looked for {path})")
    return path
