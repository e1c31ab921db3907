"""medseg.planning.rules against nnU-Net v2 2.8.1 itself, and its properties without it.

The referee (tests/referees/nnunet.py) runs nnU-Net's ``ExperimentPlanner.plan_experiment()``
on every fingerprint of :data:`REFEREE_CASES` in one side process: seeded synthetic datasets
of every kind the rules branch on (isotropic; anisotropic with the coarse axis first, second
or last; the 10th-percentile spacing rule with and without its clamp; one or two tiny cases;
one-slice-thick cases and all-one-slice datasets, which nnU-Net plans in 2D only; huge
images; hundreds of small cases, where the 5 % cap sets the batch; 512 x 512 slices, whose
tied row/column ratios meet nnU-Net's tie-break; slice spacings exactly 2^k x the pixel's, on
the "< 2" boundaries; CT and MR; up to 104 labels; 4 to 40 GB). Every value nnU-Net writes
for 3d_fullres must be the same, and its memory estimate too;
:func:`test_referee_cases_cover_every_branch` checks that the datasets reach those branches.
The property tests need no referee.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from medseg.errors import ConfigError, InputError
from medseg.planning.fingerprint import CaseFingerprint, Fingerprint, IntensityStats
from medseg.planning.rules import (
    FIELD_REASON,
    MIN_BATCH_SIZE,
    REFERENCE_GPU_MEMORY_GB,
    REFERENCE_MEMORY_3D,
    Plan,
    plan_3d_fullres,
    plan_3d_lowres,
)
from medseg.planning.topology import MIN_FEATURE_MAP_EDGE, estimate_memory
from tests.referees import nnunet

KINDS = (
    "isotropic",
    "axial",
    "coronal",
    "sagittal",
    "few_slices",
    "few_slices_clamped",
    "mixed_spacing",
    "tiny",
    "thin",
    "huge",
    "many_small",
    "ct_512",
    "exact_ratio",
    "one_slice",
)
GPU_TARGETS_GB = (4.0, 8.0, 11.0, 24.0, 40.0)
MODALITIES = ("CT", "MR", "T2", "ct", "zscore", "ADC")
#: per kind: how many referee fingerprints (seeds 0..n-1)
REFEREE_PER_KIND = 4


def _stats(rng: np.random.Generator) -> IntensityStats:
    low, high = sorted(rng.uniform(-1100, 2000, size=2))
    mean = float(rng.uniform(low, high))
    return IntensityStats(
        mean=mean,
        median=mean,
        std=float(rng.uniform(1, 500)),
        min=float(low - 10),
        max=float(high + 10),
        percentile_00_5=float(low),
        percentile_99_5=float(high),
    )


def _case_geometry(
    rng: np.random.Generator, kind: str, base: dict[str, Any]
) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """One case's (spacing, shape after crop), (slice, row, column)."""

    def u(a: float, b: float) -> float:
        return float(rng.uniform(a, b))

    def n(a: int, b: int) -> int:
        return int(rng.integers(a, b + 1))

    fine = base["fine"] * (1.0 if kind == "ct_512" else u(0.95, 1.05))
    if kind == "isotropic":
        return (fine * u(0.9, 1.1), fine, fine * u(0.9, 1.1)), (n(40, 260), n(40, 260), n(40, 260))
    if kind in ("axial", "coronal", "sagittal"):
        coarse = base["coarse"] * u(0.8, 1.2)
        spacing = [fine, fine, fine]
        shape = [n(128, 512), n(128, 512), n(128, 512)]
        spacing[base["axis"]], shape[base["axis"]] = coarse, n(20, 200)
        return tuple(spacing), tuple(shape)
    if kind == "few_slices":  # coarse with few slices: nnU-Net's 10th-percentile rule
        coarse = u(2.0, 10.0) if rng.random() < 0.5 else max(base["coarse"], 4 * base["fine"])
        return (coarse, fine, fine), (n(6, 40), n(200, 512), n(200, 512))
    if kind == "few_slices_clamped":  # ... whose 10th percentile is finer than the other axes
        coarse = u(0.3, 0.9) * fine if rng.random() < 0.3 else u(4.0, 8.0) * base["fine"]
        return (coarse, fine, fine), (n(6, 40), n(200, 512), n(200, 512))
    if kind == "mixed_spacing":
        coarse = float(rng.choice([0.8, 1.0, 1.25, 2.5, 3.0, 5.0]))
        return (coarse, fine, fine), (n(30, 300), n(100, 400), n(100, 400))
    if kind == "tiny":
        return (u(0.5, 5.0), fine, fine * u(0.5, 2.0)), (n(4, 16), n(16, 80), n(16, 80))
    if kind == "thin":
        slices = 1 if rng.random() < base["p_thin"] else n(2, 12)
        return (u(1.0, 6.0), fine, fine), (slices, n(64, 300), n(64, 300))
    if kind == "huge":
        return (fine, fine, fine * u(0.9, 1.1)), (n(400, 900), n(400, 900), n(400, 900))
    if kind == "many_small":  # batch size over 2: a small patch, 5 % of many cases
        return (fine, fine * u(0.9, 1.1), fine), (n(24, 96), n(24, 96), n(24, 96))
    if kind == "ct_512":  # square slices: ties between row and column when the patch shrinks
        return (u(0.6, 5.0), fine, fine), (n(60, 400), 512, 512)
    if kind == "exact_ratio":  # slice = 2^k x pixel exactly: the "< 2" boundaries of pooling
        return (base["pixel"] * base["power"], base["pixel"], base["pixel"]), (
            n(40, 200),
            n(200, 400),
            n(200, 400),
        )
    if kind == "one_slice":  # a median of one slice: nnU-Net plans 2D only
        return (u(1.0, 6.0), fine, fine), (1, n(64, 300), n(64, 300))
    raise AssertionError(kind)


def random_fingerprint(seed: int, kind: str) -> tuple[Fingerprint, float]:
    """A synthetic dataset fingerprint of one kind and a GPU target, reproducible from ``seed``."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    base = {
        "fine": float(rng.uniform(0.4, 1.6)),
        "coarse": float(rng.uniform(2.5, 8.0)),
        "axis": {"axial": 0, "coronal": 1, "sagittal": 2}.get(kind, 0),
        "p_thin": float(rng.uniform(0.2, 0.8)),
        "pixel": float(rng.choice([0.5, 0.625, 0.75, 1.0])),
        "power": float(rng.choice([2.0, 4.0, 8.0])),
    }
    n_cases = {"tiny": (1, 2), "huge": (1, 2), "many_small": (40, 400)}.get(kind, (2, 12))
    n_cases = int(rng.integers(n_cases[0], n_cases[1] + 1))
    n_labels = int(rng.choice([1, 2, 3, 5, 13, 30, 104]))
    cases = []
    for i in range(n_cases):
        spacing, cropped = _case_geometry(rng, kind, base)
        cases.append(
            CaseFingerprint(
                case_id=f"case{i:03d}",
                spacing=tuple(round(s, 4) for s in spacing),  # type: ignore[arg-type]
                shape=tuple(s + int(rng.integers(0, 20)) for s in cropped),  # type: ignore[arg-type]
                shape_after_crop=cropped,  # type: ignore[arg-type]
                label_voxels={},
                label_volume_ml={},
            )
        )
    fingerprint = Fingerprint(
        modality=str(rng.choice(MODALITIES)),
        labels={k: f"structure{k}" for k in range(1, n_labels + 1)},
        cases=tuple(cases),
        foreground=_stats(rng),
        median_relative_size_after_cropping=float(rng.uniform(0.3, 1.0)),
    )
    return fingerprint, float(rng.choice(GPU_TARGETS_GB))


def lung_like() -> Fingerprint:
    """Three CT cases shaped as lung-gtv-ct pat_1..3 (3 mm slices, 0.98 mm pixels)."""
    cases = tuple(
        CaseFingerprint(f"pat_{i}", sp, sh, sh, {1: 1}, {1: 1.0})
        for i, (sp, sh) in enumerate(
            [
                ((3.0, 0.977, 0.977), (41, 138, 141)),
                ((3.0, 0.977, 0.977), (46, 130, 150)),
                ((3.0, 0.98, 0.98), (50, 140, 135)),
            ]
        )
    )
    stats = IntensityStats(-100.9, -50.0, 240.4, -1000.0, 400.0, -846.0, 149.0)
    return Fingerprint("CT", {1: "GTV"}, cases, stats, 0.9)


REFEREE_CASES: list[tuple[str, Fingerprint, float]] = [
    (f"{kind}-{seed}", *random_fingerprint(seed, kind))
    for kind in KINDS
    for seed in range(REFEREE_PER_KIND)
] + [(f"lung-like-{gb:g}GB", lung_like(), gb) for gb in GPU_TARGETS_GB]
#: memory targets of CPU plans (medseg.planning.budget halves the GPU's 8 GB down to 1/256):
#: the 3d_lowres rule runs for nearly every dataset there
CPU_TARGETS_GB = (0.03125, 0.125, 0.5)
REFEREE_CASES += [
    (f"{kind}-{seed}-cpu", random_fingerprint(seed, kind)[0], CPU_TARGETS_GB[seed % 3])
    for kind in ("isotropic", "axial", "few_slices", "mixed_spacing", "ct_512", "huge", "tiny")
    for seed in range(2)
] + [(f"lung-like-{gb:g}GB", lung_like(), gb) for gb in CPU_TARGETS_GB]


# ---------------------------------------------------------------------------------------------
# equality with nnU-Net


@pytest.fixture(scope="module")
def nnunet_plans() -> dict[str, dict[str, Any]]:
    """nnU-Net's answer for every REFEREE_CASES entry (one side process for the module; a
    skip or failure to build the referee is cached by pytest for the module's tests)."""
    answers = nnunet.plan_with_nnunet(
        [fp for _, fp, _ in REFEREE_CASES], [gb for _, _, gb in REFEREE_CASES]
    )
    return {name: answer for (name, _, _), answer in zip(REFEREE_CASES, answers, strict=True)}


#: every test against nnU-Net's answers runs on every referee fingerprint and GPU target
on_referee_cases = pytest.mark.parametrize(
    ("fingerprint", "gpu_memory_gb"),
    [(fp, gb) for _, fp, gb in REFEREE_CASES],
    ids=[name for name, _, _ in REFEREE_CASES],
)


def _transposed(values: tuple[Any, ...], forward: tuple[int, ...]) -> list[Any]:
    """medseg-order values in nnU-Net's transposed order."""
    return [values[i] for i in forward]


@on_referee_cases
def test_plan_equals_nnunet(
    request: pytest.FixtureRequest,
    nnunet_plans: dict[str, dict[str, Any]],
    fingerprint: Fingerprint,
    gpu_memory_gb: float,
) -> None:
    name = request.node.callspec.id
    expected = nnunet_plans[name]
    if expected["3d_fullres"] is None:  # nnU-Net plans 2D only: medseg refuses
        with pytest.raises(InputError, match="2D only"):
            plan_3d_fullres(fingerprint, gpu_memory_gb=gpu_memory_gb)
        return
    plan = plan_3d_fullres(fingerprint, gpu_memory_gb=gpu_memory_gb)
    _require_same_configuration(plan, expected, "3d_fullres")


@on_referee_cases
def test_lowres_plan_equals_nnunet(
    request: pytest.FixtureRequest,
    nnunet_plans: dict[str, dict[str, Any]],
    fingerprint: Fingerprint,
    gpu_memory_gb: float,
) -> None:
    """nnU-Net's 3d_lowres configuration (the spacing search CPU plans use), or none where
    nnU-Net makes none."""
    name = request.node.callspec.id
    expected = nnunet_plans[name]
    if expected["3d_fullres"] is None:
        with pytest.raises(InputError, match="2D only"):
            plan_3d_lowres(fingerprint, gpu_memory_gb=gpu_memory_gb)
        return
    plan = plan_3d_lowres(fingerprint, gpu_memory_gb=gpu_memory_gb)
    if expected["3d_lowres"] is None:
        assert plan is None
        return
    assert plan is not None
    _require_same_configuration(plan, expected, "3d_lowres")


def _require_same_configuration(plan: Plan, expected: dict[str, Any], key: str) -> None:
    fullres = expected[key]
    estimate = expected["vram_estimate" if key == "3d_fullres" else "vram_estimate_lowres"]
    forward = plan.transpose_forward
    arch = fullres["architecture"]["arch_kwargs"]
    assert list(forward) == expected["transpose_forward"]
    assert list(plan.transpose_backward) == expected["transpose_backward"]
    assert _transposed(plan.spacing, forward) == pytest.approx(fullres["spacing"], abs=1e-3)
    assert _transposed(plan.median_shape, forward) == fullres["median_image_size_in_voxels"]
    got = {
        "patch_size": _transposed(plan.patch_size, forward),
        "batch_size": plan.batch_size,
        "n_stages": len(plan.features),
        "features_per_stage": list(plan.features),
        "kernel_sizes": [_transposed(k, forward) for k in plan.kernel_sizes],
        "strides": [_transposed(s, forward) for s in plan.strides],
        "memory_estimate": plan.memory_estimate,
        "normalization_schemes": [
            {"clip_zscore": "CTNormalization", "image_zscore": "ZScoreNormalization"}[
                plan.normalisation
            ]
        ],
        "use_mask_for_norm": [plan.use_mask_for_norm],
    }
    want = {
        "patch_size": fullres["patch_size"],
        "batch_size": fullres["batch_size"],
        "n_stages": arch["n_stages"],
        "features_per_stage": arch["features_per_stage"],
        "kernel_sizes": arch["kernel_sizes"],
        "strides": arch["strides"],
        "memory_estimate": estimate,
        "normalization_schemes": fullres["normalization_schemes"],
        "use_mask_for_norm": fullres["use_mask_for_norm"],
    }
    assert got == want
    if plan.normalisation == "clip_zscore":
        props = expected["foreground_intensity_properties_per_channel"]["0"]
        assert (plan.clip_lower, plan.clip_upper, plan.mean, plan.std) == (
            props["percentile_00_5"],
            props["percentile_99_5"],
            props["mean"],
            props["std"],
        )


def test_referee_cases_cover_every_branch() -> None:
    """The referee's fingerprints reach the rules' branches (else equality proves little)."""
    plans = []
    for _, fp, gb in REFEREE_CASES:
        try:
            plans.append((fp, gb, plan_3d_fullres(fp, gpu_memory_gb=gb)))
        except InputError:
            continue
    reasons = [p.reasons for _, _, p in plans]
    assert len(plans) < len(REFEREE_CASES)  # some dataset nnU-Net plans in 2D only
    assert {p.transpose_forward[0] for _, _, p in plans} == {0, 1, 2}
    assert any("10th percentile" in r["spacing"] and "raised" not in r["spacing"] for r in reasons)
    assert any("raised to just above" in r["spacing"] for r in reasons)
    assert any("not triggered" in r["spacing"] for r in reasons)
    assert any("shrunk" in r["patch_size"] for r in reasons)
    # nnU-Net shrinks the last of the axes tied for the largest patch / median ratio
    assert any(
        p.median_shape[1] == p.median_shape[2] and "along row" in p.reasons["patch_size"]
        for _, _, p in plans
    )
    assert any("as it is" in r["patch_size"] for r in reasons)
    assert any("capped at" in r["batch_size"] for r in reasons)
    # 3d_lowres: made; searched but dropped (the image shrank under 2x); not needed
    shares = [np.prod(p.patch_size) / np.prod(p.median_shape) for _, _, p in plans]
    lowres = [plan_3d_lowres(fp, gpu_memory_gb=gb) for fp, gb, _ in plans]
    assert any(low is not None for low in lowres)
    assert any(low is None and share < 0.25 for low, share in zip(lowres, shares, strict=True))
    assert any(share >= 0.25 for share in shares)
    assert any(low is not None and "axes over 2×" in low.reasons["spacing"] for low in lowres)
    assert any(p.batch_size > MIN_BATCH_SIZE for _, _, p in plans)
    assert {p.normalisation for _, _, p in plans} == {"clip_zscore", "image_zscore"}
    assert {p.use_mask_for_norm for _, _, p in plans} == {True, False}
    assert {gb for _, gb, _ in plans} == set(GPU_TARGETS_GB) | set(CPU_TARGETS_GB)
    assert any(len(fp.cases) == 1 for fp, _, _ in plans)
    assert any(any(c.shape_after_crop[0] == 1 for c in fp.cases) for fp, _, _ in plans)
    assert any(p.median_shape[0] % 1 == 0.5 for _, _, p in plans)  # a median between two cases
    assert len({len(p.features) for _, _, p in plans}) >= 4


# ---------------------------------------------------------------------------------------------
# properties (no referee)

fingerprints = st.builds(random_fingerprint, st.integers(0, 2**31 - 1), st.sampled_from(KINDS))


def _plan(fingerprint: Fingerprint, gb: float) -> Plan:
    """The plan; a dataset nnU-Net plans in 2D only is rejected as an example."""
    try:
        return plan_3d_fullres(fingerprint, gpu_memory_gb=gb)
    except InputError as exc:
        assert "2D only" in str(exc)
        assume(False)
        raise


def _stage_sizes(plan: Plan) -> list[list[float]]:
    """Feature-map edges per stage for the plan's patch (the size each stride is applied to)."""
    sizes, size = [], [float(v) for v in plan.patch_size]
    for stride in plan.strides:
        size = [s / k for s, k in zip(size, stride, strict=True)]
        sizes.append(size)
    return sizes


@settings(max_examples=60)
@given(fingerprints)
def test_topology_properties(drawn: tuple[Fingerprint, float]) -> None:
    fingerprint, gb = drawn
    plan = _plan(fingerprint, gb)
    n_stages = len(plan.features)
    assert len(plan.kernel_sizes) == len(plan.strides) == n_stages
    assert plan.strides[0] == (1, 1, 1)
    # the patch is a multiple of each axis' pooling product
    pooling = np.prod(np.array(plan.strides), axis=0)
    assert all(p % k == 0 for p, k in zip(plan.patch_size, pooling, strict=True))
    spacing = np.array(plan.spacing)
    current = spacing.copy()
    previous = [float(v) for v in plan.patch_size]
    never_pooled = [all(s[a] == 1 for s in plan.strides) for a in range(3)]
    for stage, (stride, size) in enumerate(zip(plan.strides, _stage_sizes(plan), strict=True)):
        pooled = [a for a in range(3) if stride[a] == 2]
        assert all(stride[a] in (1, 2) for a in range(3))
        assert stage == 0 or pooled, "every stage after the first pools some axis"
        # every pooled feature map keeps at least MIN_FEATURE_MAP_EDGE voxels
        assert all(size[a] >= MIN_FEATURE_MAP_EDGE for a in pooled)
        # no axis pooled while its spacing is over 2x the finest poolable axis' spacing
        # (feature map >= 2 x the edge; an axis never pooled may have been padded from a
        # median's .5 - 7.5 slices plan as 8 - and counts from 8.5 up)
        poolable = [
            a
            for a in range(3)
            if previous[a] >= 2 * MIN_FEATURE_MAP_EDGE + (0.5 if never_pooled[a] else 0)
        ]
        if pooled:
            finest = min(current[a] for a in poolable)
            assert all(current[a] / finest < 2 for a in pooled)
        # kernel 1 only on an axis still coarser than 2x the finest spacing
        kernel = plan.kernel_sizes[stage]
        assert all(k in (1, 3) for k in kernel)
        if stage < n_stages - 1:
            assert all(current[a] / current.min() >= 2 for a in range(3) if kernel[a] == 1)
        else:
            assert kernel == (3, 3, 3)
        current = current * np.array(stride)
        previous = size
    # features: base · 2^k, non-decreasing, capped
    assert plan.features[0] == 32
    assert list(plan.features) == sorted(plan.features)
    assert max(plan.features) <= 320
    # batch and memory
    assert plan.batch_size >= MIN_BATCH_SIZE
    assert plan.memory_estimate <= REFERENCE_MEMORY_3D * gb / REFERENCE_GPU_MEMORY_GB
    assert plan.memory_estimate == estimate_memory(
        plan.patch_size, plan.strides, plan.features, len(fingerprint.labels) + 1
    )


@settings(max_examples=40)
@given(fingerprints, st.sampled_from([(1, 0, 2), (1, 2, 0), (0, 2, 1), (2, 0, 1)]))
def test_axis_order_does_not_change_the_plan(
    drawn: tuple[Fingerprint, float], order: tuple[int, int, int]
) -> None:
    """Permuting every case's axes permutes the plan: the coarse axis is found wherever it is.

    Only permutations that keep the other two axes' relative order and a unique coarsest
    axis are compared, because nnU-Net's tie-breaks (first maximum, last argsort) depend on
    the order of equal axes."""
    fingerprint, gb = drawn
    plan = _plan(fingerprint, gb)
    coarse = plan.transpose_forward[0]
    rest = [a for a in order if a != coarse]
    others = [a for a in range(3) if a != coarse]
    assume(rest == others and list(plan.spacing).count(max(plan.spacing)) == 1)

    def permute(values: Any) -> Any:
        return tuple(values[a] for a in order)

    moved = dataclasses.replace(
        fingerprint,
        cases=tuple(
            dataclasses.replace(
                c,
                spacing=permute(c.spacing),
                shape=permute(c.shape),
                shape_after_crop=permute(c.shape_after_crop),
            )
            for c in fingerprint.cases
        ),
    )
    other = plan_3d_fullres(moved, gpu_memory_gb=gb)
    assert other.spacing == permute(plan.spacing)
    assert other.patch_size == permute(plan.patch_size)
    assert other.median_shape == permute(plan.median_shape)
    assert other.strides == tuple(permute(s) for s in plan.strides)
    assert other.kernel_sizes == tuple(permute(k) for k in plan.kernel_sizes)
    assert (other.batch_size, other.features) == (plan.batch_size, plan.features)
    assert other.anisotropic_axis == (
        None if plan.anisotropic_axis is None else order.index(plan.anisotropic_axis)
    )


@settings(max_examples=60)
@given(
    st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=0, max_size=6),
    st.tuples(*[st.integers(1, 6)] * 3),
    st.integers(0, 2),
    st.integers(1, 5),
    st.integers(1, 200),
)
def test_memory_estimate_grows_with_the_patch(
    pools: list[tuple[bool, bool, bool]],
    multiples: tuple[int, int, int],
    axis: int,
    more: int,
    num_classes: int,
) -> None:
    strides = ((1, 1, 1), *(tuple(2 if p else 1 for p in pool) for pool in pools))
    divisor = np.prod(np.array(strides), axis=0)
    features = tuple(min(320, 32 * 2**k) for k in range(len(strides)))
    patch = tuple(int(m * d) for m, d in zip(multiples, divisor, strict=True))
    bigger = list(patch)
    bigger[axis] += more * int(divisor[axis])
    small = estimate_memory(patch, strides, features, num_classes)
    assert 0 < small < estimate_memory(tuple(bigger), strides, features, num_classes)
    assert small < estimate_memory(patch, strides, features, num_classes + 1)


@settings(max_examples=20)
@given(fingerprints)
def test_same_fingerprint_same_plan(drawn: tuple[Fingerprint, float]) -> None:
    fingerprint, gb = drawn
    first = _plan(fingerprint, gb)
    again = plan_3d_fullres(
        Fingerprint.from_dict(json.loads(fingerprint.to_json())), gpu_memory_gb=gb
    )
    assert again == first
    assert json.dumps(again.to_dict()) == json.dumps(first.to_dict())


def test_reasons_explain_every_field() -> None:
    plan = plan_3d_fullres(lung_like())
    explained = {f.name for f in dataclasses.fields(Plan)} - {"reasons"}
    assert set(FIELD_REASON) == explained
    assert set(plan.reasons) == set(FIELD_REASON.values())
    assert all(line.strip() and "\n" not in line for line in plan.reasons.values())
    assert list(plan.to_dict()) == [f.name for f in dataclasses.fields(Plan)]


def test_larger_gpu_never_gives_a_smaller_patch_or_batch() -> None:
    sizes = [plan_3d_fullres(lung_like(), gpu_memory_gb=gb) for gb in GPU_TARGETS_GB]
    volumes = [int(np.prod(p.patch_size)) * p.batch_size for p in sizes]
    assert volumes == sorted(volumes)


@pytest.mark.parametrize(
    ("modality", "scheme"),
    [("nonorm", "NoNormalization"), ("rescale_to_0_1", "RescaleTo01"), ("RGB_to_0_1", "RGBTo01")],
    ids=["nonorm", "rescale", "rgb"],
)
def test_unsupported_normalisation_is_refused(modality: str, scheme: str) -> None:
    fingerprint = dataclasses.replace(lung_like(), modality=modality)
    with pytest.raises(InputError, match=scheme):
        plan_3d_fullres(fingerprint)


@pytest.mark.parametrize(
    "kwargs",
    [{"gpu_memory_gb": 0.0}, {"base_features": 0}, {"max_features": 16}],
    ids=["no-memory", "no-features", "cap-below-base"],
)
def test_bad_options_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        plan_3d_fullres(lung_like(), **kwargs)


def test_no_cases_is_refused() -> None:
    with pytest.raises(InputError, match="no cases"):
        plan_3d_fullres(dataclasses.replace(lung_like(), cases=()))


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [("true", pytest.fail.Exception), ("", pytest.skip.Exception)],
    ids=["ci-fails", "local-skips"],
)
def test_missing_referee_fails_under_ci_and_skips_locally(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, ci: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("MEDSEG_NNUNET_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(outcome, match="MEDSEG_NNUNET_PYTHON"):
        nnunet.nnunet_python()
