"""nnU-Net v2's experiment-planning rules for the 3d_fullres configuration.

:func:`plan_3d_fullres` turns a :class:`~medseg.planning.fingerprint.Fingerprint` into the
experiment ``nnunetv2`` 2.8.1's ``ExperimentPlanner.plan_experiment()`` writes as
``configurations["3d_fullres"]`` of ``nnUNetPlans.json``: target spacing, normalisation, the
PlainConvUNet topology, patch and batch size for a GPU memory target. The arithmetic is
nnU-Net's, rewritten here because medseg cannot depend on nnunetv2 (it pins its own torch and
a training stack that does not import beside medseg's); each function names the nnU-Net
function it reproduces; the network arithmetic (topology, memory estimate) is in
:mod:`medseg.planning.topology`. ``tests/test_planning_rules.py`` runs nnU-Net itself on many
fingerprints and requires the same numbers.

nnU-Net plans in a transposed axis order, the coarsest axis first (``transpose_forward``). That
order is used inside this module only: every per-axis value of a :class:`Plan` is in medseg's
array order ``(slice, row, column)``.

:func:`plan_3d_lowres` is nnU-Net's 3d_lowres configuration (used by CPU plans); 2D and the
cascade are not planned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np

from medseg.errors import ConfigError, InputError
from medseg.planning.fingerprint import Fingerprint
from medseg.planning.topology import (
    MIN_FEATURE_MAP_EDGE,
    estimate_memory,
    features_per_stage,
    pool_and_conv_props,
)

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "FIELD_REASON",
    "LOWRES_CREATION_THRESHOLD",
    "LOWRES_SPACING_INCREASE",
    "MAX_DATASET_COVERED",
    "MIN_BATCH_SIZE",
    "REFERENCE_BATCH_SIZE",
    "REFERENCE_GPU_MEMORY_GB",
    "REFERENCE_MEMORY_3D",
    "Plan",
    "plan_3d_fullres",
    "plan_3d_lowres",
]

#: nnU-Net's ``ANISO_THRESHOLD``: an axis is anisotropic when its spacing is over 3x the others'.
ANISOTROPY_THRESHOLD = 3
#: ``UNet_reference_val_3d``: the memory estimate
#: (:func:`~medseg.planning.topology.estimate_memory`) that fills the reference GPU.
REFERENCE_MEMORY_3D = 560_000_000
#: ``UNet_reference_val_corresp_GB``: the GPU memory that reference corresponds to.
REFERENCE_GPU_MEMORY_GB = 8
#: ``UNet_reference_val_corresp_bs_3d``: the batch size that reference corresponds to.
REFERENCE_BATCH_SIZE = 2
#: ``UNet_min_batch_size``.
MIN_BATCH_SIZE = 2
#: ``max_dataset_covered``: one batch sees at most this fraction of the dataset's voxels.
MAX_DATASET_COVERED = 0.05
#: ``lowres_creation_threshold``: a 3d_lowres plan is made when the 3d_fullres patch holds
#: less than this share of the median image's voxels.
LOWRES_CREATION_THRESHOLD = 0.25
#: ``spacing_increase_factor`` of the 3d_lowres search (per step).
LOWRES_SPACING_INCREASE = 1.03
#: the initial patch has the volume of a 256³ cube (nnU-Net's start before shrinking).
_INITIAL_PATCH_EDGE = 256
#: nnU-Net's channel names (casefolded) whose normalisation medseg does not implement.
_UNSUPPORTED_SCHEMES = {
    "nonorm": "NoNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}
_AXIS_NAMES = ("slice", "row", "column")

Normalisation = Literal["clip_zscore", "image_zscore"]

#: The :attr:`Plan.reasons` key that explains each field of :class:`Plan`.
FIELD_REASON: dict[str, str] = {
    "spacing": "spacing",
    "median_shape": "median_shape",
    "transpose_forward": "transpose",
    "transpose_backward": "transpose",
    "patch_size": "patch_size",
    "batch_size": "batch_size",
    "features": "topology",
    "kernel_sizes": "topology",
    "strides": "topology",
    "memory_estimate": "patch_size",
    "normalisation": "normalisation",
    "clip_lower": "normalisation",
    "clip_upper": "normalisation",
    "mean": "normalisation",
    "std": "normalisation",
    "use_mask_for_norm": "use_mask_for_norm",
    "anisotropic_axis": "anisotropic_axis",
}


@dataclass(frozen=True, slots=True)
class Plan:
    """nnU-Net v2's 3d_fullres experiment for a dataset. Per-axis values are in medseg's array
    order ``(slice, row, column)``; spacings in mm, shapes in voxels.

    Attributes:
        spacing: the target spacing every case is resampled to.
        median_shape: the median over cases of the cropped shape at that spacing (``.5`` where
            the number of cases is even, as nnU-Net's ``median_image_size_in_voxels``).
        transpose_forward: nnU-Net's axis order (coarsest first) as indices into medseg's;
            ``transpose_backward`` is its inverse.
        patch_size: the training patch, a multiple of each axis' pooling product.
        batch_size: patches per iteration.
        features: feature channels per stage (``features_per_stage``).
        kernel_sizes: convolution kernel per stage.
        strides: downsampling per stage, the first ``(1, 1, 1)``.
        memory_estimate: :func:`~medseg.planning.topology.estimate_memory` of the patch and
            network (nnU-Net's units: feature-map voxels; :data:`REFERENCE_MEMORY_3D` fills
            8 GB at batch 2).
        normalisation: ``"clip_zscore"`` (nnU-Net's CTNormalization: clip to
            ``[clip_lower, clip_upper]``, then ``(x - mean) / std`` with the dataset's
            foreground statistics) or ``"image_zscore"`` (ZScoreNormalization: each image by
            its own mean and standard deviation; the four numbers are None).
        use_mask_for_norm: z-score inside the non-zero region only (nnU-Net's choice when
            cropping removed over a quarter of the median image).
        anisotropic_axis: the axis the target spacing makes anisotropic (max / min spacing
            over :data:`ANISOTROPY_THRESHOLD`), which nnU-Net resamples separately (order 0
            along it); None if none.
        reasons: one line per decision, keyed as :data:`FIELD_REASON` says.
    """

    spacing: tuple[float, float, float]
    median_shape: tuple[float, float, float]
    transpose_forward: tuple[int, int, int]
    transpose_backward: tuple[int, int, int]
    patch_size: tuple[int, int, int]
    batch_size: int
    features: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, int, int], ...]
    strides: tuple[tuple[int, int, int], ...]
    memory_estimate: int
    normalisation: Normalisation
    clip_lower: float | None
    clip_upper: float | None
    mean: float | None
    std: float | None
    use_mask_for_norm: bool
    anisotropic_axis: int | None
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values (tuples as lists), keys in field order."""
        raw = asdict(self)
        return {f.name: _lists(raw[f.name]) for f in fields(self)}


def _lists(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# the dataset: spacing, shape, normalisation


def _target_spacing(
    spacings: np.ndarray, shapes: np.ndarray, n_cases: int
) -> tuple[np.ndarray, str]:
    """``ExperimentPlanner.determine_fullres_target_spacing``: the median spacing, except on a
    dataset whose coarsest axis is over 3x the others' spacing and has under a third of their
    voxels: that axis gets the 10th percentile of its spacings (never finer than the other
    axes: then just above the coarsest of them)."""
    target = np.percentile(spacings, 50, 0)
    target_size = np.percentile(shapes, 50, 0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    other_spacings = [target[i] for i in others]
    other_sizes = [target_size[i] for i in others]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(other_spacings)
    aniso_voxels = target_size[worst] * ANISOTROPY_THRESHOLD < min(other_sizes)
    name = _AXIS_NAMES[worst]
    head = "the one case's spacing" if n_cases == 1 else f"median of the {n_cases} cases' spacings"
    spacing_text = (
        f"{target[worst]:.4g} {'>' if aniso_spacing else '≤'} 3 × {max(other_spacings):.4g}"
    )
    voxels_text = (
        f"{target_size[worst]:.4g} × 3 {'<' if aniso_voxels else '≥'} {min(other_sizes):.4g}"
    )
    if not aniso_spacing:
        return target, f"{head}; no axis is anisotropic ({name} {spacing_text})"
    if not aniso_voxels:
        return target, (
            f"{head}; {name} axis is anisotropic ({spacing_text}) but has enough voxels "
            f"({voxels_text}): 10th-percentile rule not triggered"
        )
    median = target[worst]
    chosen = np.percentile(spacings[:, worst], 10)
    note = f"its 10th percentile {chosen:.4g} mm"
    if chosen < max(other_spacings):
        chosen = max(max(other_spacings), chosen) + 1e-5
        note += f", raised to just above the other axes' {max(other_spacings):.4g} mm"
    target[worst] = chosen
    return target, (
        f"{head}, except {name}: anisotropic ({spacing_text}) with few voxels ({voxels_text}), "
        f"so instead of the median {median:.4g} mm {note}"
    )


def _normalisation(fingerprint: Fingerprint) -> tuple[dict[str, Any], str, str]:
    """``determine_normalization_scheme_and_whether_mask_is_used_for_norm`` with nnU-Net's
    ``get_normalization_scheme``: channel name ``CT`` (any case) -> CTNormalization, never
    masked; anything else -> ZScoreNormalization, masked when cropping to the non-zero region
    left under 3/4 of the median image."""
    modality = fingerprint.modality
    scheme = modality.casefold()
    if scheme in _UNSUPPORTED_SCHEMES:
        raise InputError(
            f"modality {modality!r} means nnU-Net's {_UNSUPPORTED_SCHEMES[scheme]}, which medseg "
            "does not implement: expected 'CT' or an MR-like modality (z-score)"
        )
    relative = fingerprint.median_relative_size_after_cropping
    if scheme == "ct":
        fg = fingerprint.foreground
        values = {
            "normalisation": "clip_zscore",
            "clip_lower": float(fg.percentile_00_5),
            "clip_upper": float(fg.percentile_99_5),
            "mean": float(fg.mean),
            "std": float(fg.std),
            "use_mask_for_norm": False,
        }
        return (
            values,
            (
                f"{modality}: clip to the foreground 0.5/99.5 percentiles "
                f"[{fg.percentile_00_5:.6g}, {fg.percentile_99_5:.6g}], then "
                f"(x {'+' if fg.mean < 0 else '−'} {abs(fg.mean):.6g}) / {fg.std:.6g} "
                "(nnU-Net CTNormalization, dataset-wide statistics)"
            ),
            "False: CT normalisation never uses the mask",
        )
    masked = bool(relative < 3 / 4)
    values = {
        "normalisation": "image_zscore",
        "clip_lower": None,
        "clip_upper": None,
        "mean": None,
        "std": None,
        "use_mask_for_norm": masked,
    }
    if masked:
        mask_text = (
            f"True: cropping to the non-zero region kept a median {relative:.3g} < 3/4 of the "
            "image, so the z-score is taken inside that region (medseg's preprocessing "
            "implements only False)"
        )
    else:
        mask_text = f"False: cropping kept a median {relative:.3g} ≥ 3/4 of the image"
    return values, f"{modality}: per-image z-score (nnU-Net ZScoreNormalization)", mask_text


def _anisotropic_axis(spacing: np.ndarray) -> tuple[int | None, str]:
    """The target-spacing half of nnU-Net's ``determine_do_sep_z_and_axis``
    (``get_do_separate_z``: max / min > 3; ``get_lowres_axis``: the single coarsest axis)."""
    ratio = float(np.max(spacing) / np.min(spacing))
    coarsest = np.where(max(spacing) / np.array(spacing) == 1)[0]
    per_case = (
        " (a case whose own spacing is anisotropic is resampled separately along its coarse axis)"
    )
    if ratio <= ANISOTROPY_THRESHOLD:
        return None, f"None: target spacing max/min {ratio:.3g} ≤ 3{per_case}"
    if len(coarsest) != 1:
        return (
            None,
            f"None: max/min {ratio:.3g} > 3 but {len(coarsest)} axes share the coarsest spacing",
        )
    axis = int(coarsest[0])
    return axis, (
        f"{_AXIS_NAMES[axis]}: target spacing max/min {ratio:.3g} > 3, so nnU-Net resamples "
        "it separately (order 0 along it, order 3 in-plane)"
    )


# ---------------------------------------------------------------------------------------------
# the plan


def _to_medseg(values: Any, backward: list[int]) -> tuple[Any, ...]:
    """Per-axis values from nnU-Net's transposed order back to medseg's."""
    return tuple(values[i] for i in backward)


def _ints(values: Any, backward: list[int]) -> tuple[int, int, int]:
    a, b, c = (int(v) for v in _to_medseg(values, backward))
    return a, b, c


def _floats(values: Any, backward: list[int]) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in _to_medseg(values, backward))
    return a, b, c


def _shape_text(values: Any) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


@dataclass(frozen=True, slots=True)
class _PatchFit:
    """The patch search's outcome, in nnU-Net's transposed order."""

    start: list[int]  # the 256³-voxel start shaped by 1 / spacing
    padded: tuple[int, ...]  # the start clipped to the median and padded to its pooling
    patch: tuple[int, ...]
    strides: list[list[int]]
    kernels: list[list[int]]
    num_pool: list[int]
    estimate: int
    shrunk: list[int]  # how often each axis was shrunk


def _fit_patch(
    spacing_t: np.ndarray,
    median_t: np.ndarray,
    reference: float,
    num_classes: int,
    base_features: int,
    max_features: int,
) -> _PatchFit:
    """The patch and topology of ``get_plans_for_configuration`` (3D): a start with the volume
    of 256³ voxels and the aspect of 1 / spacing, clipped to the median shape, padded to its
    pooling; while the memory estimate is over the reference, the axis with the largest
    patch / median ratio shrinks by one pooling multiple and the topology is recomputed."""
    inverse = 1 / np.array(spacing_t)
    start = [round(i) for i in inverse * (_INITIAL_PATCH_EDGE**3 / np.prod(inverse)) ** (1 / 3)]
    clipped = np.array([min(i, j) for i, j in zip(start, median_t, strict=True)])
    num_pool, strides, kernels, patch, divisible = pool_and_conv_props(spacing_t, clipped)

    def _estimate(patch: Any, strides: list[list[int]]) -> int:
        features = features_per_stage(len(strides), base_features, max_features)
        return estimate_memory(tuple(patch), tuple(map(tuple, strides)), features, num_classes)

    estimate = _estimate(patch, strides)
    padded = patch
    shrunk = [0, 0, 0]
    # the batch of at least 2 is why nnU-Net writes `estimate / ref_bs * 2 > reference`
    while estimate / REFERENCE_BATCH_SIZE * 2 > reference:
        axis = int(np.argsort([i / j for i, j in zip(patch, median_t, strict=True)])[-1])
        # nnU-Net subtracts the multiple of the patch one step smaller, so that no valid
        # size is skipped (224 between 256 and 192 when 256 must be a multiple of 64)
        trial = list(patch)
        trial[axis] -= divisible[axis]
        *_, divisible = pool_and_conv_props(spacing_t, trial)
        smaller = list(patch)
        smaller[axis] -= divisible[axis]
        if smaller[axis] < 1:
            raise InputError(
                f"no patch fits the memory reference {reference:,.0f}: an axis shrank to nothing"
            )
        shrunk[axis] += 1
        num_pool, strides, kernels, patch, divisible = pool_and_conv_props(spacing_t, smaller)
        estimate = _estimate(patch, strides)
    return _PatchFit(start, padded, patch, strides, kernels, num_pool, estimate, shrunk)


def plan_3d_fullres(
    fingerprint: Fingerprint,
    *,
    gpu_memory_gb: float = 8.0,
    base_features: int = 32,
    max_features: int = 320,
) -> Plan:
    """nnU-Net v2 2.8.1's 3d_fullres plan for a dataset (``ExperimentPlanner.plan_experiment``
    and ``get_plans_for_configuration``, default planner, PlainConvUNet).

    Args:
        fingerprint: the dataset; per-axis values in ``(slice, row, column)`` order.
        gpu_memory_gb: the GPU memory target (nnU-Net's ``gpu_memory_target_in_gb``): the
            memory reference is scaled by ``gpu_memory_gb / 8``.
        base_features: features of the first stage (``UNet_base_num_features``).
        max_features: the cap on features per stage (``UNet_max_features_3d``).

    Returns:
        The plan, every per-axis value in ``(slice, row, column)`` order.

    Raises:
        InputError: no cases, a modality nnU-Net normalises in a way medseg does not, or a
            dataset nnU-Net plans no 3D configuration for (median of one slice).
        ConfigError: a non-positive GPU memory or feature count.
    """
    _check_options(gpu_memory_gb, base_features, max_features)
    grid = _fullres_grid(fingerprint)
    return _configuration(fingerprint, grid, gpu_memory_gb, base_features, max_features)


def plan_3d_lowres(
    fingerprint: Fingerprint,
    *,
    gpu_memory_gb: float = 8.0,
    base_features: int = 32,
    max_features: int = 320,
    max_coarsening: float | None = None,
) -> Plan | None:
    """nnU-Net v2 2.8.1's 3d_lowres plan (``plan_experiment``), or None where nnU-Net plans
    none: when the 3d_fullres patch holds under :data:`LOWRES_CREATION_THRESHOLD` of the
    median image's voxels, the target spacing grows by :data:`LOWRES_SPACING_INCREASE` per
    step (only the axes over 2x finer than the coarsest while there are such axes, then all)
    and the configuration is planned again at the shrunk median shape, until the patch holds
    that share; the plan is dropped if the median image shrank by less than 2x.

    medseg plans no cascade: a CPU plan (:mod:`medseg.planning.budget`) uses this rule to
    keep the patch's field of view when its memory target is small, and trains the lowres
    network on its own. Arguments, return and errors as :func:`plan_3d_fullres`, and

    Args:
        max_coarsening: medseg's addition (None: nnU-Net's rule): no axis' spacing grows
            over this multiple of its 3d_fullres spacing; an axis at its cap stays there while
            the others go on growing (the axes over 2x finer than the coarsest first, as
            nnU-Net's rule), and the search stops when every axis is at its cap. A small
            memory target then trades some context for resolution instead of all of it
            (nnU-Net's rule at a CPU's targets reaches 5-20 mm on a 512 x 512 H&N CT).
    """
    if max_coarsening is not None and max_coarsening <= 1:
        raise ConfigError(f"max_coarsening must be > 1, got {max_coarsening}")
    _check_options(gpu_memory_gb, base_features, max_features)
    grid = _fullres_grid(fingerprint)
    fullres = _configuration(fingerprint, grid, gpu_memory_gb, base_features, max_features)
    n_cases = len(fingerprint.cases)
    fullres_voxels = float(np.prod(grid.median_t, dtype=np.float64))
    median_voxels = fullres_voxels
    patch_voxels = float(np.prod(fullres.patch_size, dtype=np.float64))
    spacing_t = grid.spacing_t.copy()
    lowres: Plan | None = None
    steps = 0
    capped = False
    while patch_voxels / median_voxels < LOWRES_CREATION_THRESHOLD:
        open_axes = np.ones(3, dtype=bool)
        if max_coarsening is not None:  # an axis at its cap stays; the others go on
            open_axes = spacing_t * LOWRES_SPACING_INCREASE <= max_coarsening * grid.spacing_t
            capped = capped or not np.all(open_axes)
            if not np.any(open_axes):
                break
        coarse = ((max(spacing_t) / spacing_t) > 2) & open_axes
        grown = spacing_t.copy()
        if np.any(coarse):
            grown[coarse] *= LOWRES_SPACING_INCREASE
        else:
            grown[open_axes] *= LOWRES_SPACING_INCREASE
        spacing_t = grown
        steps += 1
        scaled = grid.spacing_t / spacing_t * grid.median_t
        median_voxels = float(np.prod(scaled, dtype=np.float64))
        low = _Grid(
            spacing_t=spacing_t.copy(),
            median_t=np.array([round(i) for i in scaled], dtype=np.float64),
            n_voxels_dataset=median_voxels * n_cases,
            forward=grid.forward,
            backward=grid.backward,
            spacing_reason="",
            median_reason="",
        )
        lowres = _configuration(fingerprint, low, gpu_memory_gb, base_features, max_features)
        patch_voxels = float(np.prod(lowres.patch_size, dtype=np.float64))
    if lowres is None or fullres_voxels / median_voxels < 2:
        return None
    fullres_spacing = _shape_text(fullres.spacing)
    share = float(np.prod(fullres.patch_size, dtype=np.float64)) / fullres_voxels
    reasons = dict(lowres.reasons)
    reasons["spacing"] = (
        f"nnU-Net's 3d_lowres rule: the 3d_fullres patch {_shape_text(fullres.patch_size)} at "
        f"{fullres_spacing} mm ({grid.spacing_reason}) holds {share:.1%} < "
        f"{LOWRES_CREATION_THRESHOLD:.0%} of the median image, so the spacing grew ×"
        f"{LOWRES_SPACING_INCREASE} per step ({steps} steps; axes over 2× finer than the "
        "coarsest first) until the patch holds "
        f"{patch_voxels / median_voxels:.1%} of the median image"
    )
    if capped:
        reasons["spacing"] = reasons["spacing"].replace(
            "until the patch holds",
            f"with no axis over {max_coarsening:g}× its 3d_fullres spacing (medseg's CPU cap: "
            "an axis at its cap stays; nnU-Net's rule would go on) until the patch holds "
            f"{LOWRES_CREATION_THRESHOLD:.0%} or every axis is at its cap: the patch holds",
        )
    reasons["median_shape"] = (
        f"the 3d_fullres median shape {_shape_text(fullres.median_shape)} scaled to this "
        "spacing and rounded"
    )
    return replace(lowres, reasons=reasons)


def _check_options(gpu_memory_gb: float, base_features: int, max_features: int) -> None:
    if gpu_memory_gb <= 0 or base_features < 1 or max_features < base_features:
        raise ConfigError(
            f"need gpu_memory_gb > 0 and 1 ≤ base_features ≤ max_features, got {gpu_memory_gb}, "
            f"{base_features}, {max_features}"
        )


@dataclass(frozen=True, slots=True)
class _Grid:
    """Where a configuration is planned, in nnU-Net's transposed order."""

    spacing_t: np.ndarray
    median_t: np.ndarray
    n_voxels_dataset: float  # nnU-Net's approximate_n_voxels_dataset (the batch cap)
    forward: list[int]
    backward: list[int]
    spacing_reason: str
    median_reason: str


def _fullres_grid(fingerprint: Fingerprint) -> _Grid:
    """The 3d_fullres target spacing, axis order and median shape (``plan_experiment``)."""
    if not fingerprint.cases:
        raise InputError("the fingerprint has no cases: nothing to plan from")
    n_cases = len(fingerprint.cases)
    spacings = np.vstack([np.asarray(s, dtype=np.float64) for s in fingerprint.spacings])
    shapes = np.vstack([np.asarray(s) for s in fingerprint.shapes_after_crop])
    if np.any(spacings <= 0) or np.any(shapes < 1):
        raise InputError("every case needs positive spacings and shapes to be planned")

    target, spacing_reason = _target_spacing(spacings, shapes, n_cases)
    # determine_transpose: the coarsest axis first
    coarsest = int(np.argmax(target))
    forward = [coarsest] + [i for i in range(3) if i != coarsest]
    backward = [forward.index(i) for i in range(3)]
    # compute_new_shape per case, then the median (plan_experiment)
    new_shapes = [
        np.array([round(s / t * n) for s, t, n in zip(sp, target, sh, strict=True)])
        for sp, sh in zip(fingerprint.spacings, fingerprint.shapes_after_crop, strict=True)
    ]
    median_t = np.median(new_shapes, 0)[forward]
    if median_t[0] == 1:
        raise InputError(
            f"the median shape at the target spacing is {_shape_text(median_t[backward])}: "
            "one voxel along the coarsest axis, for which nnU-Net plans 2D only"
        )
    return _Grid(
        spacing_t=target[forward],
        median_t=median_t,
        n_voxels_dataset=float(np.prod(median_t, dtype=np.float64) * n_cases),
        forward=forward,
        backward=backward,
        spacing_reason=spacing_reason,
        median_reason=(
            "the one case's" if n_cases == 1 else f"median over the {n_cases} cases of the"
        )
        + " cropped shape resampled to the target spacing",
    )


def _configuration(
    fingerprint: Fingerprint,
    grid: _Grid,
    gpu_memory_gb: float,
    base_features: int,
    max_features: int,
) -> Plan:
    """``get_plans_for_configuration`` (3D) at ``grid``: patch, topology, batch, normalisation."""
    spacing_t, median_t, forward, backward = (
        grid.spacing_t,
        grid.median_t,
        grid.forward,
        grid.backward,
    )
    target = spacing_t[backward]
    coarsest = forward[0]
    n_voxels_dataset = grid.n_voxels_dataset
    reference = REFERENCE_MEMORY_3D * (gpu_memory_gb / REFERENCE_GPU_MEMORY_GB)
    num_classes = len(fingerprint.labels) + 1
    fit = _fit_patch(spacing_t, median_t, reference, num_classes, base_features, max_features)
    patch, strides, kernels, estimate = fit.patch, fit.strides, fit.kernels, fit.estimate

    batch = round((reference / estimate) * REFERENCE_BATCH_SIZE)
    cap = round(n_voxels_dataset * MAX_DATASET_COVERED / np.prod(patch, dtype=np.float64))
    batch_size = max(min(batch, cap), MIN_BATCH_SIZE)

    n_stages = len(strides)
    features = features_per_stage(n_stages, base_features, max_features)
    norm_values, norm_reason, mask_reason = _normalisation(fingerprint)
    anisotropic_axis, aniso_reason = _anisotropic_axis(target)

    median = _to_medseg(median_t, backward)
    gb = f"{gpu_memory_gb:g} GB"
    shrunk = _to_medseg(fit.shrunk, backward)
    shrink_text = ", ".join(
        f"{count}× along {_AXIS_NAMES[a]}" for a, count in enumerate(shrunk) if count
    )
    patch_reason = (
        f"256³-voxel start {_shape_text(_to_medseg(fit.start, backward))} shaped by 1/spacing, "
        f"clipped to the median shape {_shape_text(median)}, padded to the pooling "
        f"{_shape_text(_to_medseg(fit.padded, backward))}, "
        + (
            f"shrunk {shrink_text} until the {gb} estimate fits"
            if shrink_text
            else f"fits the {gb} estimate as it is"
        )
        + f" (estimate {estimate:,} of {reference:,.0f} at batch 2)"
    )
    batch_parts = [f"round({reference:,.0f} / {estimate:,} × 2) = {batch}"]
    if cap < batch:
        batch_parts.append(
            f"capped at {cap}: a batch holds at most 5 % of the dataset's "
            f"{n_voxels_dataset:,.0f} voxels"
        )
    if max(min(batch, cap), 0) < MIN_BATCH_SIZE:
        batch_parts.append(f"raised to the minimum {MIN_BATCH_SIZE}")
    pooled = ", ".join(f"{_AXIS_NAMES[forward[i]]} {n}×" for i, n in enumerate(fit.num_pool))
    topology_reason = (
        f"{n_stages} stages: an axis is pooled while its spacing is within 2× of the finest and "
        f"its feature map stays ≥ {MIN_FEATURE_MAP_EDGE} voxels ({pooled}); kernel 3 on axes "
        f"within 2× of the finest spacing, 1 on coarser ones; features {base_features}·2^k "
        f"capped at {max_features}"
    )
    if forward == [0, 1, 2]:
        transpose_reason = "the slice axis is the coarsest: nnU-Net's order is medseg's"
    else:
        transpose_reason = (
            f"nnU-Net plans with the coarsest axis ({_AXIS_NAMES[coarsest]}) first: "
            f"transpose_forward {tuple(forward)}; every value here is in (slice, row, column)"
        )
    reasons = {
        "spacing": grid.spacing_reason,
        "median_shape": grid.median_reason,
        "transpose": transpose_reason,
        "patch_size": patch_reason,
        "batch_size": "; ".join(batch_parts),
        "topology": topology_reason,
        "normalisation": norm_reason,
        "use_mask_for_norm": mask_reason,
        "anisotropic_axis": aniso_reason,
    }
    return Plan(
        spacing=_floats(spacing_t, backward),
        median_shape=_floats(median_t, backward),
        transpose_forward=_ints(forward, [0, 1, 2]),
        transpose_backward=_ints(backward, [0, 1, 2]),
        patch_size=_ints(patch, backward),
        batch_size=int(batch_size),
        features=features,
        kernel_sizes=tuple(_ints(k, backward) for k in kernels),
        strides=tuple(_ints(s, backward) for s in strides),
        memory_estimate=estimate,
        reasons=reasons,
        anisotropic_axis=anisotropic_axis,
        **norm_values,
    )
