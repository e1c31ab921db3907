"""Prediction returns labels on exactly the input's grid, whatever its size and orientation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import medseg
from medseg.config import load_config
from medseg.errors import InputError
from medseg.geometry import Geometry
from medseg.infer import predict, predict_probabilities
from medseg.model import LoadedModel, build_network
from medseg.preprocess import resample_scores_to_labels
from medseg.volume import SourceInfo, Volume, VolumeKind
from tests import strategies
from tests.conftest import require_data, require_module

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _untrained_model() -> LoadedModel:
    config = load_config(TINY)
    torch.manual_seed(0)
    network = build_network(config.model).eval()
    return LoadedModel(network, config, config.model.label_names, medseg.__version__)


def _oblique_direction() -> tuple[float, ...]:
    a, b = math.radians(20.0), math.radians(-35.0)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return tuple((rz @ rx).ravel())


GRIDS = {
    "odd-37x51x63-oblique": Geometry(
        (37, 51, 63), (2.5, 0.77, 0.91), (-123.4, 56.7, -890.1), _oblique_direction()
    ),
    "smaller-than-roi": Geometry((5, 7, 9), (3.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
    "one-slice": Geometry((1, 40, 40), (5.0, 0.5, 0.5), (10.0, 20.0, 30.0)),
}


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
def test_prediction_is_on_exactly_the_input_grid(grid: Geometry) -> None:
    rng = np.random.default_rng(0)
    source = SourceInfo(
        path=Path("/data/case.nii.gz"),
        series_instance_uid="1.2.3",
        frame_of_reference_uid="1.2.3.4",
        sop_instance_uids=tuple(f"1.2.3.4.{k}" for k in range(grid.shape[0])),
        modality="CT",
    )
    hu = rng.normal(0.0, 300.0, grid.shape).astype(np.float32)
    image = Volume(hu, grid, VolumeKind.IMAGE, source)

    labels = predict(_untrained_model(), image)

    assert labels.kind is VolumeKind.LABELS
    assert labels.array.dtype == np.uint8
    assert labels.array.shape == grid.shape
    assert labels.geometry == image.geometry  # the same object values, not merely "close"
    assert labels.source == image.source
    assert set(np.unique(labels.array)) <= {0, 1}


def test_argmax_channel_is_the_label_value() -> None:
    model = _untrained_model()
    with torch.no_grad():  # make the network say "label 1" everywhere
        convolutions = (torch.nn.Conv3d, torch.nn.ConvTranspose3d)
        last = [m for m in model.network.modules() if isinstance(m, convolutions)][-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 5.0]))
    grid = Geometry((16, 32, 32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    labels = predict(model, Volume(np.zeros(grid.shape, np.float32), grid))
    assert np.all(labels.array == 1)


def test_labels_input_is_refused() -> None:
    grid = Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="needs an image volume"):
        labels = Volume(np.zeros(grid.shape, np.uint8), grid, VolumeKind.LABELS)
        predict(_untrained_model(), labels)


def test_training_mode_is_restored() -> None:
    model = _untrained_model()
    model.network.train()
    grid = Geometry((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    predict(model, Volume(np.zeros(grid.shape, np.float32), grid))
    assert model.network.training


# ---------------------------------------------------------------------------------------------
# fast path: windows, blending, body box, resampling, backends, memory


def _model_with(config_updates: dict[str, object], **infer: object) -> LoadedModel:
    model = _untrained_model()
    config = model.config.model_copy(
        update={
            "infer": model.config.infer.model_copy(update=infer),
            **{k: v for k, v in config_updates.items()},
        }
    )
    return LoadedModel(model.network, config, model.label_names, model.medseg_version)


class _Threshold(torch.nn.Module):
    """A 1x1x1 "network" whose label 1 is exactly: scaled intensity > 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 40.0]).reshape(2, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -20.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    a, b = a == value, b == value
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


@pytest.mark.parametrize("size", [1, 16, 17, 100, 200, 511], ids=lambda s: f"size-{s}")
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.8], ids=lambda o: f"overlap-{o}")
def test_window_starts_are_monai_s(size: int, overlap: float) -> None:
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    from medseg.infer import window_starts

    roi = min(16, size)
    interval = _get_scan_interval((size,), (roi,), 1, (overlap,))
    expected = sorted({s[0].start for s in dense_patch_slices((size,), (roi,), interval)})
    assert window_starts(size, roi, overlap) == expected


def _monai_labels(model: LoadedModel, image: Volume) -> np.ndarray:
    """The referee: MONAI's sliding_window_inference over the whole image, resampled to the
    model's spacing if it has one, with the model's window settings; labels on ``image``'s
    grid (the logits interpolated linearly back, as MONAI's Invertd would, then argmax)."""
    from monai.inferers import sliding_window_inference

    from medseg.preprocess import model_grid, resample, scale_intensity

    pre, infer = model.config.preprocess, model.config.infer
    resampled = image
    if pre.spacing_mm is not None:
        resampled = resample(image, model_grid(image.geometry, pre.spacing_mm))
    with torch.inference_mode():
        x = torch.from_numpy(scale_intensity(resampled, pre).array.copy())
        logits = sliding_window_inference(
            x[None, None],
            infer.roi_size,
            infer.sw_batch_size,
            model.network,
            infer.overlap,
            infer.blend,
        )
    assert isinstance(logits, torch.Tensor)
    if pre.spacing_mm is None:
        return logits.argmax(1)[0].numpy()
    scores = logits[0].numpy().astype(np.float16)
    return resample_scores_to_labels(scores, resampled.geometry, image.geometry)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    depth=st.integers(1, 6),
    plane=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    extra=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    rows=st.lists(
        st.tuples(st.integers(0, 10), st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)))),
        max_size=4,
    ),
    block=st.tuples(st.integers(0, 16), st.integers(1, 8)),
    gaussian=st.booleans(),
)
def test_a_blocks_sum_of_weights_is_that_of_every_window_added_to_a_full_buffer(
    depth: int,
    plane: tuple[int, int],
    extra: tuple[int, int],
    rows: list[tuple[int, list[tuple[int, int]]]],
    block: tuple[int, int],
    gaussian: bool,
) -> None:
    """The weights of the slices handed on are computed from the windows that ran: the same
    numbers as adding every window's weight into a buffer of the whole region (MONAI's count
    map), for any windows, rows and block of slices."""
    from monai.data.utils import compute_importance_map

    from medseg.infer import _weight_sums

    roi = (depth, *plane)
    weight = compute_importance_map(roi, mode="gaussian" if gaussian else "constant")
    size = (30, plane[0] + extra[0] + 4, plane[1] + extra[1] + 4)
    run = [(z, [(y, x) for y, x in corners]) for z, corners in rows]
    full = torch.zeros(size)
    for z, corners in run:
        for y, x in corners:
            full[z : z + depth, y : y + plane[0], x : x + plane[1]] += weight
    first, count = block
    got = _weight_sums(run, first, first + count, weight, size[1:], constant=not gaussian)
    assert got.shape == (count, *size[1:])
    torch.testing.assert_close(got, full[first : first + count], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("overlap", [0.5, 0.9])
def test_constant_blending_on_a_model_grid_agrees_with_monai(overlap: float) -> None:
    """The divided path (a model grid) with constant blending counts windows (at 0.9 up to
    2,448 windows cover a voxel of a 16 x 32 x 32 window: more than a byte holds)."""
    model = _untrained_model()
    pre = model.config.preprocess.model_copy(update={"spacing_mm": (2.5, 1.2, 1.3)})
    model = _model_with({"preprocess": pre}, blend="constant", overlap=overlap, sw_batch_size=4)
    grid = Geometry((30, 60, 56), (2.0, 0.8, 0.9), (10.0, -20.0, 30.0))
    hu = _body_phantom(grid)
    labels = predict(model, Volume(hu, grid)).array
    expected = _monai_labels(model, Volume(hu, grid))
    body = hu > -500.0
    # the network says something (at 0.9, blending 2,448 windows labels most of the body)
    assert 0.05 < np.mean(expected[body] == 1) < 1.0
    assert np.mean(labels[body] == expected[body]) > 0.999


@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.75])
def test_a_model_grid_slice_is_resampled_once_however_much_window_rows_overlap(
    overlap: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of windows share slices (half of them at overlap 0.5): the shared ones are
    carried to the next row, not resampled again, and the labels stay MONAI's (0.75: rows
    overlap by more than half, so the summed logits move through a copy)."""
    from medseg import geometry as geo
    from medseg import preprocess

    model = _untrained_model()
    pre = model.config.preprocess.model_copy(update={"spacing_mm": (1.7, 1.2, 1.3)})
    model = _model_with({"preprocess": pre}, blend="gaussian", overlap=overlap, sw_batch_size=4)
    grid = Geometry((50, 60, 56), (1.0, 0.8, 0.9), (10.0, -20.0, 30.0))
    hu = _body_phantom(grid)
    resampled: list[tuple[float, ...]] = []  # where each slice resampled in starts (mm)
    original = preprocess.resample_linear

    def counting(array, source, target, **kwargs):  # type: ignore[no-untyped-def]
        if target.spacing_mm == pre.spacing_mm:  # into the model grid, not back out of it
            resampled.extend(_rounded(geo.slice_positions_mm(target)))
        return original(array, source, target, **kwargs)

    monkeypatch.setattr(preprocess, "resample_linear", counting)
    labels = predict(model, Volume(hu, grid)).array
    monkeypatch.setattr(preprocess, "resample_linear", original)
    rows = len(_window_rows(model, grid))
    assert rows >= 3  # several rows of windows, overlapping
    assert len(resampled) == len(set(resampled))  # no slice twice
    model_grid = preprocess.model_grid(grid, pre.spacing_mm)
    assert set(resampled) <= set(_rounded(geo.slice_positions_mm(model_grid)))
    expected = _monai_labels(model, Volume(hu, grid))
    body = hu > -500.0
    assert 0.05 < np.mean(expected[body] == 1) < 1.0
    assert np.mean(labels[body] == expected[body]) > 0.999


def _rounded(points: np.ndarray) -> list[tuple[float, ...]]:
    return [tuple(round(float(c), 6) for c in p) for p in points]


def _window_rows(model: LoadedModel, grid: Geometry) -> list[int]:
    """The starts of the window rows (along slices) MONAI places on the model grid."""
    from medseg import preprocess
    from medseg.infer import window_starts

    model_grid = preprocess.model_grid(grid, model.config.preprocess.spacing_mm)
    infer = model.config.infer
    return window_starts(model_grid.shape[0], infer.roi_size[0], infer.overlap)


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_whole_image_tiling_agrees_with_monai(blend: str) -> None:
    """Without the body box, the labels are MONAI's (up to float16 summation)."""
    model = _model_with({}, body_threshold_hu=None, blend=blend, overlap=0.5, sw_batch_size=3)
    assert model.config.infer.roi_size == (16, 32, 32)
    grid = Geometry((37, 70, 61), (2.0, 0.8, 0.9), (0.0, 0.0, 0.0))
    hu = np.random.default_rng(1).normal(50.0, 200.0, grid.shape).astype(np.float32)
    image = Volume(hu, grid)
    labels = predict(model, image).array
    expected = _monai_labels(model, image)
    assert np.mean(labels == expected) > 0.999


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_three_classes_blend_to_monai_s_probabilities_and_labels(blend: str) -> None:
    """The blended sum keeps each class minus background (n - 1 channels, float16 beyond
    two classes): softmax and argmax of it are those of MONAI's blended logits."""
    from monai.inferers import sliding_window_inference

    from medseg.preprocess import scale_intensity

    torch.manual_seed(3)
    network = torch.nn.Sequential(
        torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(3, 3, 1)
    ).eval()
    base = _model_with({}, body_threshold_hu=None, blend=blend, overlap=0.5, sw_batch_size=3)
    model = LoadedModel(network, base.config, {1: "a", 2: "b"}, base.medseg_version)
    grid = Geometry((37, 70, 61), (2.0, 0.8, 0.9), (0.0, 0.0, 0.0))
    hu = np.random.default_rng(4).normal(50.0, 200.0, grid.shape).astype(np.float32)
    image = Volume(hu, grid)
    infer = model.config.infer
    with torch.inference_mode():
        x = torch.from_numpy(scale_intensity(image, model.config.preprocess).array.copy())
        logits = sliding_window_inference(
            x[None, None], infer.roi_size, 3, network, infer.overlap, infer.blend
        )
    assert isinstance(logits, torch.Tensor)
    expected = torch.softmax(logits[0], dim=0).numpy()
    got = np.asarray(predict_probabilities(model, image).array)
    np.testing.assert_allclose(got, expected, rtol=0, atol=3e-3)
    labels = np.asarray(predict(model, image).array)
    assert len(np.unique(labels)) == 3
    top = np.sort(expected, axis=0)
    clear = top[-1] - top[-2] > 1e-2  # where float16 rounding cannot decide the argmax
    assert clear.mean() > 0.5
    assert np.array_equal(labels[clear], expected.argmax(axis=0)[clear])


def _body_phantom(grid: Geometry) -> np.ndarray:
    """Air around an elliptic body of noisy soft tissue with a brighter lesion."""
    rng = np.random.default_rng(7)
    k, j, i = np.ogrid[: grid.shape[0], : grid.shape[1], : grid.shape[2]]
    n, rows, columns = grid.shape
    body = (
        (((j - rows / 2) / (0.3 * rows)) ** 2 + ((i - columns / 2) / (0.35 * columns)) ** 2 < 1)
        & (k > 3)
        & (k < n - 4)
    )
    hu = np.where(body, rng.normal(40.0, 60.0, grid.shape), -1000.0).astype(np.float32)
    hu[n // 2 : n // 2 + 5, rows // 2 : rows // 2 + 8, columns // 2 : columns // 2 + 9] += 150.0
    return hu


@pytest.mark.parametrize("spacing", [None, (2.5, 1.2, 1.3)], ids=["input-grid", "model-grid"])
def test_body_crop_gives_every_window_monai_s_input(spacing: tuple[float, ...] | None) -> None:
    """Skipping air changes no label in the body: the windows that run are the ones MONAI's
    whole-image tiling places there, with the same input, so even a network that normalises
    each window (instance norm, as here) sees the same context. Referee: MONAI's
    sliding_window_inference over the whole (resampled) image."""
    model = _untrained_model()
    pre = model.config.preprocess.model_copy(update={"spacing_mm": spacing})
    model = _model_with({"preprocess": pre}, blend="gaussian", overlap=0.5, sw_batch_size=3)
    assert model.config.infer.body_threshold_hu == -500.0
    grid = Geometry((45, 150, 140), (2.0, 0.8, 0.9), (10.0, -20.0, 30.0))
    hu = _body_phantom(grid)
    image = Volume(hu, grid)

    labels = predict(model, image).array

    expected = _monai_labels(model, image)
    body = hu > -500.0
    assert 0.05 < np.mean(expected[body] == 1) < 0.95  # the network says something
    assert np.mean(labels[body] == expected[body]) > 0.999


def test_body_box_never_drops_a_lesion_at_the_image_border() -> None:
    config = load_config(TINY)
    model = LoadedModel(_Threshold(), config, config.model.label_names, medseg.__version__)
    grid = Geometry((40, 90, 90), (2.5, 0.9, 0.9), (0.0, 0.0, 0.0))
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    hu[12:30, 30:60, 30:60] = 40.0  # body: soft tissue, below the network's threshold
    hu[20:25, 40:48, 40:50] = 200.0  # a lesion inside
    hu[0:3, 0:4, 85:90] = 200.0  # a lesion in the corner, cut off by the field of view
    hu[38:40, 88:90, 0:2] = 150.0
    truth = (window_in_scaled_units(hu, config) > 0.5).astype(np.uint8)

    labels = predict(model, Volume(hu, grid)).array

    np.testing.assert_array_equal(labels, truth)
    assert labels[0, 0, 89] == 1 and labels[39, 89, 0] == 1


def window_in_scaled_units(hu: np.ndarray, config: object) -> np.ndarray:
    lower, upper = -100.0, 250.0  # tiny.yaml's window, stated independently of medseg
    assert (config.preprocess.lower_hu, config.preprocess.upper_hu) == (lower, upper)  # type: ignore[attr-defined]
    return np.clip((hu - lower) / (upper - lower), 0.0, 1.0)


def test_all_air_is_background_without_running_the_network() -> None:
    grid = Geometry((8, 40, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    labels = predict(_untrained_model(), Volume(np.full(grid.shape, -1000.0), grid))
    assert labels.array.dtype == np.uint8 and not labels.array.any()


RESAMPLED_GRIDS = {
    "oblique-anisotropic-odd": Geometry(
        (23, 41, 37), (3.0, 0.7, 0.9), (12.5, -40.0, 300.0), _oblique_direction()
    ),
    "finer-than-model": Geometry((9, 50, 51), (1.0, 0.5, 0.5), (0.0, 0.0, 0.0)),
}


@pytest.mark.parametrize("grid", RESAMPLED_GRIDS.values(), ids=RESAMPLED_GRIDS.keys())
def test_model_spacing_returns_labels_on_the_input_grid(grid: Geometry) -> None:
    model = _untrained_model()
    preprocess_config = model.config.preprocess.model_copy(update={"spacing_mm": (2.0, 1.5, 1.5)})
    model = _model_with({"preprocess": preprocess_config})
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    hu[2:-2, 5:-5, 5:-5] = np.random.default_rng(2).normal(
        50.0, 150.0, (grid.shape[0] - 4, grid.shape[1] - 10, grid.shape[2] - 10)
    )
    image = Volume(hu, grid)

    labels = predict(model, image)
    probabilities = predict_probabilities(model, image)

    assert labels.geometry == grid and labels.array.shape == grid.shape
    assert labels.array.dtype == np.uint8
    assert probabilities.geometry == grid and probabilities.array.shape == (2, *grid.shape)
    np.testing.assert_allclose(probabilities.array.sum(axis=0), 1.0, atol=1e-3)
    # labels interpolate logits, probabilities interpolate softmax: they differ only where
    # classes are nearly tied (noise input: many such voxels); a wrong axis would give ~0.5
    agree = np.mean(probabilities.array.argmax(axis=0) == labels.array)
    assert agree > 0.95


def test_probabilities_match_labels_without_resampling() -> None:
    model = _untrained_model()
    grid = Geometry((20, 40, 44), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    hu = np.random.default_rng(3).normal(0.0, 300.0, grid.shape).astype(np.float32)
    probabilities = predict_probabilities(model, Volume(hu, grid))
    labels = predict(model, Volume(hu, grid))
    assert probabilities.kind is VolumeKind.PROBABILITIES
    np.testing.assert_allclose(probabilities.array.sum(axis=0), 1.0, atol=2e-3)
    assert np.mean(probabilities.array.argmax(axis=0) == labels.array) > 0.999


def test_flip_tta_is_invariant_to_flipping_the_input() -> None:
    model = _model_with({}, flip_tta=(0, 1, 2), body_threshold_hu=None)
    grid = Geometry((16, 32, 32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))  # one window: exact
    hu = np.random.default_rng(4).normal(0.0, 300.0, grid.shape).astype(np.float32)
    plain = predict(model, Volume(hu, grid)).array
    flipped = predict(model, Volume(np.ascontiguousarray(np.flip(hu, (1, 2))), grid)).array
    assert np.mean(np.flip(flipped, (1, 2)) == plain) > 0.999


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_backend_agrees_with_torch_on_a_real_ct(backend: str) -> None:
    from medseg.training import data

    case = require_data("hn-ct/pt_1")
    require_module(backend)
    image = data.load_image(case)
    settings = {"roi_size": (32, 128, 128), "sw_batch_size": 2, "num_threads": 2}
    reference = predict(_model_with({}, **settings), image).array
    labels = predict(_model_with({}, backend=backend, **settings), image).array
    assert labels.shape == image.geometry.shape
    for value in (0, 1):
        assert _dice(labels, reference, value) >= 0.999


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_cuda_autocast_agrees_with_cpu(precision: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    grid = Geometry((24, 64, 64), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    hu = np.random.default_rng(5).normal(0.0, 300.0, grid.shape).astype(np.float32)
    reference = predict(_untrained_model(), Volume(hu, grid)).array
    model = _model_with({}, precision=precision)
    model.network.cuda()
    labels = predict(model, Volume(hu, grid)).array
    assert _dice(labels, reference, 1) >= 0.99


def test_float16_on_cpu_is_refused() -> None:
    from medseg.errors import ConfigError

    grid = Geometry((16, 32, 32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="float16"):
        predict(_model_with({}, precision="float16"), Volume(np.zeros(grid.shape), grid))


#: Peak memory of labels-only inference on a 400x512x512 CT (int16 input: 210 MB) with a
#: 2-class model, beyond the process and the input: at most 250 MB (measured: ~100 MB; the
#: uint8 labels alone are 105 MB, touched only inside the body box). A full-size float32
#: probability map of the two classes alone would be 840 MB; MONAI's sliding_window_inference
#: holds a float32 copy of the input, the float32 output of both classes and a float32 count
#: map (4 x 420 MB).
MEMORY_BOUND_MB = 250

_MEMORY_SCRIPT = """
import sys, numpy as np, torch
import medseg
from tests.conftest import require_data
from medseg.config import load_config
from medseg.geometry import Geometry
from medseg.infer import predict, predict_probabilities
from medseg.model import LoadedModel
from medseg.volume import Volume
config = load_config(sys.argv[1])
config = config.model_copy(update={"infer": config.infer.model_copy(
    update={"roi_size": (32, 128, 128), "sw_batch_size": 4, "num_threads": 2})})
torch.manual_seed(0)
class Affine(torch.nn.Module):  # 2 classes, logits (0, 40 x - 20): a network without FLOPs
    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 40.0 * x - 20.0], dim=1)
    def parameters(self, recurse=True):
        yield torch.zeros(1)
# the test is about the aggregation, not the network
network = Affine().eval()
model = LoadedModel(network, config, config.model.label_names, "t")
grid = Geometry((400, 512, 512), (1.0, 0.8, 0.8), (0.0, 0.0, 0.0))
hu = np.full(grid.shape, -1000, dtype=np.int16)
k, j, i = np.ogrid[:400, :512, :512]
hu[:] = np.where(((j - 256) / 200.0) ** 2 + ((i - 256) / 230.0) ** 2 < 1, 40, -1000)
hu[:, 200:230, 240:270] = 150
image = Volume(hu, grid)
predict(model, Volume(hu[:40], Geometry((40, 512, 512), (1.0, 0.8, 0.8), (0.0, 0.0, 0.0))))
def peak_kb():  # VmHWM: ru_maxrss would carry the parent's (pytest's) peak across fork + exec
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
before = peak_kb()
labels = predict(model, image)
after = peak_kb()
assert labels.array.shape == grid.shape and labels.array.dtype == np.uint8
print((after - before) / 1024.0)
"""


def test_labels_of_a_large_ct_stay_under_the_memory_bound() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(TINY)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    growth_mb = float(out.stdout.strip().splitlines()[-1])
    print(f"peak memory growth {growth_mb:.0f} MB (bound {MEMORY_BOUND_MB} MB)")
    assert growth_mb <= MEMORY_BOUND_MB, f"peak grew by {growth_mb:.0f} MB"


def test_canonical_orientation_makes_prediction_independent_of_storage_order() -> None:
    """The same voxels stored feet-first with rows and columns swapped get the same labels."""
    from medseg import geometry as geo

    rng = np.random.default_rng(3)
    hu = rng.normal(0.0, 150.0, (12, 40, 36)).astype(np.float32)
    axial = Volume(hu, Geometry(hu.shape, (3.0, 1.0, 1.2), (5.0, -4.0, 7.0)))
    # stored as (column, row, slice) with the slice axis reversed: a lossless re-storage
    stored_array = np.ascontiguousarray(np.transpose(hu, (2, 1, 0))[:, :, ::-1])
    d = axial.geometry.direction_matrix
    stored_grid = Geometry(
        stored_array.shape,
        (1.2, 1.0, 3.0),
        tuple(geo.index_to_world(axial.geometry, (hu.shape[0] - 1, 0, 0))),  # type: ignore[arg-type]
        tuple(np.column_stack([d[:, 2], d[:, 1], -d[:, 0]]).ravel()),
    )
    stored = Volume(stored_array, stored_grid)
    model = _untrained_model()
    canonical = model.config.model_copy(
        update={"preprocess": model.config.preprocess.model_copy(update={"orientation": "LPS"})}
    )
    model_lps = LoadedModel(model.network, canonical, model.label_names, model.medseg_version)

    expected = predict(model_lps, axial).array
    got = predict(model_lps, stored)
    assert got.geometry == stored.geometry
    np.testing.assert_array_equal(np.transpose(got.array[:, :, ::-1], (2, 1, 0)), expected)
    assert 0 < expected.sum() < expected.size  # the untrained model labels some voxels, not all
    # as stored, the network sees another array and (untrained, not symmetric) answers otherwise
    as_stored = predict(model, stored).array
    assert not np.array_equal(np.transpose(as_stored[:, :, ::-1], (2, 1, 0)), expected)


def test_openvino_static_batch_pads_a_partial_batch_and_returns_only_its_windows() -> None:
    from medseg.runtime import onnx_predictor

    model = _untrained_model()
    roi = model.config.infer.roi_size
    session = onnx_predictor(model.network, "openvino", roi, num_threads=1, batch_size=4)
    windows = torch.rand((3, 1, *roi), generator=torch.Generator().manual_seed(0))
    got = session(windows.numpy())
    with torch.inference_mode():
        expected = model.network.eval()(windows).numpy()
    assert got.shape == expected.shape == (3, 2, *roi)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.slow
def test_speed_benchmark_runs_and_compares_the_same_windows(tmp_path: Path) -> None:
    """benchmarks/infer_speed.py as the README runs it, on a grid small enough for CI: a random
    UNet over the whole image (no body crop), so MONAI and medseg run the same windows and
    must agree; the ratio lines are printed for both blendings; the end-to-end medseg predict
    runs (model settings, nnU-Net's) on a small DICOM phantom print their times and stages."""
    import re
    import subprocess
    import sys

    from medseg.synthetic import phantom
    from tests.conftest import REPO_ROOT

    require_module("openvino")
    case = phantom.write_case(
        phantom.make_case(seed=3, shape=(20, 64, 64), n_tumours=1),
        tmp_path / "case",
        patient_id="E2E-BENCH",
    )
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "infer_speed.py"), "--random-unet",
         "--slices", "4", "--model-spacing", "5", "5", "5", "--no-body-crop", "--repeats", "1",
         "--backends", "openvino", "--end-to-end", str(case.ct_dir),
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=400, check=False, cwd=REPO_ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    ratios = re.findall(
        r"^speed ratio \(overlap ([\d.]+) (\w+), medseg openvino (?:auto|float32) in float32 vs "
        r"MONAI\): ([\d.]+)x faster, peak RSS (\d+)% of MONAI, memory added by the call (\d+)% "
        r"of MONAI's, Dice vs MONAI ([\d.]+)$",
        run.stdout, re.MULTILINE,
    )  # fmt: skip
    assert [(o, b) for o, b, *_ in ratios] == [("0.25", "constant"), ("0.5", "gaussian")], (
        run.stdout
    )
    for *_, speed, _peak, _added, dice in ratios:
        assert float(speed) > 0 and float(dice) >= 0.99
    from medseg.precision import native_precisions

    if native_precisions("cpu", "openvino"):
        # auto runs too, and on random weights nobody verified it can only be float32
        assert run.stdout.count("backend=openvino float32 (auto)") == 2, run.stdout
    # without the body crop, medseg's network runs exactly MONAI's windows
    windows = re.findall(
        r"^network alone: medseg openvino (?:auto|float32) runs (\d+) of MONAI's (\d+) windows",
        run.stdout,
        re.MULTILINE,
    )
    assert len(windows) == 2 and all(ours == theirs != "0" for ours, theirs in windows), run.stdout
    end_to_end = re.findall(
        r"^(model's settings|nnUNetv2_predict-style \(step 0.5, gaussian, 8-way mirroring\)) +"
        r"([\d.]+) s wall, (.*); network in float32\n +load [\d.]+, .*report [\d.]+ s "
        r"\(stages ([\d.]+) s;",
        run.stdout,
        re.MULTILINE,
    )
    assert [name for name, *_ in end_to_end] == [
        "model's settings",
        "nnUNetv2_predict-style (step 0.5, gaussian, 8-way mirroring)",
    ], run.stdout
    assert end_to_end[0][2] == "the plain run"
    assert re.fullmatch(r"[\d.]+x the plain run; Dice vs the plain run [\d.]+", end_to_end[1][2])
    for _, wall, _, stages in end_to_end:
        assert 0 < float(stages) < float(wall)
    if not torch.cuda.is_available():
        assert "GPU variants not run: no CUDA device" in run.stdout
    else:
        assert run.stdout.count("GPU speed ratio") == 6, run.stdout  # 3 medseg variants x 2


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    shape=st.tuples(st.integers(8, 40), st.integers(20, 90), st.integers(20, 90)),
    spacing=st.tuples(*[st.sampled_from([0.7, 1.0, 1.3, 2.5])] * 3),
    model_spacing=st.none() | st.tuples(*[st.sampled_from([1.0, 1.6, 3.0])] * 3),
    body=st.tuples(*[st.floats(0.0, 1.0)] * 6),
    direction=strategies.directions(),
    overlap=st.sampled_from([0.0, 0.25, 0.6]),
)
def test_body_crop_agrees_with_monai_on_any_grid(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    model_spacing: tuple[float, float, float] | None,
    body: tuple[float, ...],
    direction: tuple[float, ...],
    overlap: float,
) -> None:
    """Property form of the test above: any shape (smaller or larger than the window), any
    spacing and direction, with or without a model grid, a body box anywhere (at the edge
    too): inside the body, medseg's labels are those of MONAI's whole-image tiling."""
    grid = Geometry(shape, spacing, (3.0, -7.0, 11.0), direction)
    # a body of at least 7 mm (two voxels of the coarsest model grid) per axis, anywhere: a
    # thinner one blurs below lower_hu on the model grid, and windows of nothing but air are
    # not run by design (MONAI's labels there are instance norm's answer to a constant)
    least = [min(n, math.ceil(7.0 / d)) for n, d in zip(shape, spacing, strict=True)]
    lows = [int(f * (n - m)) for f, n, m in zip(body[:3], shape, least, strict=True)]
    highs = [
        lo + m + int(f * (n - lo - m))
        for lo, f, n, m in zip(lows, body[3:], shape, least, strict=True)
    ]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    inside = tuple(slice(a, b) for a, b in zip(lows, highs, strict=True))
    hu[inside] = np.random.default_rng(sum(shape)).uniform(0.0, 250.0, hu[inside].shape)
    model = _untrained_model()
    pre = model.config.preprocess.model_copy(update={"spacing_mm": model_spacing})
    model = _model_with({"preprocess": pre}, blend="constant", overlap=overlap, sw_batch_size=2)
    image = Volume(hu, grid)

    labels = predict(model, image).array

    expected = _monai_labels(model, image)
    body_voxels = hu > -500.0
    assert labels.shape == shape
    assert np.mean(labels[body_voxels] == expected[body_voxels]) > 0.995


# ---------------------------------------------------------------------------------------------
# nnU-Net-style plans: separate-z resampling, per-axis strides


def _thick_slices() -> tuple[Volume, np.ndarray]:
    """5 mm slices of air with a lesion (200 HU) in slices 4 and 7 only, and its truth for
    the _Threshold network (tiny.yaml's window: scaled > 0.5 is above 75 HU)."""
    grid = Geometry((12, 40, 40), (5.0, 0.8, 0.8), (-12.0, 30.5, 7.25))
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    hu[[4, 7], 10:30, 8:32] = 200.0
    hu[7, 12:16, 10:14] = 60.0  # a hole below the threshold
    return Volume(hu, grid), (hu > 75.0).astype(np.uint8)


@pytest.mark.parametrize("want", ["labels", "probabilities"])
def test_separate_z_predicts_each_thick_slice_from_itself(want: str) -> None:
    """On 5 mm slices and a 3 mm model grid, separate z (nearest across slices both ways,
    in-plane identity here) hands every input slice's own intensities to a voxel-wise
    network and its own scores back: the labels are the threshold of the input, exactly.
    Trilinear resampling (the flag off) blends each lesion slice with the air beside it."""
    config = load_config(TINY)
    image, truth = _thick_slices()
    results = {}
    for flag in (True, False):
        pre = config.preprocess.model_copy(
            update={"spacing_mm": (3.0, 0.8, 0.8), "resample_separate_z": flag}
        )
        model = LoadedModel(
            _Threshold(), config.model_copy(update={"preprocess": pre}), {1: "tumour"}, "x"
        )
        if want == "labels":
            out = predict(model, image)
        else:
            out = predict_probabilities(model, image)
            out = out.with_array(out.array.argmax(axis=0).astype(np.uint8), kind=VolumeKind.LABELS)
        assert out.geometry == image.geometry and out.array.dtype == np.uint8
        results[flag] = out.array
    np.testing.assert_array_equal(results[True], truth)
    assert results[False].sum() < truth.sum()  # the flag is what makes the difference


def test_anisotropic_dynunet_with_separate_z_predicts_on_the_input_grid() -> None:
    """A DynUNet with strides (1, 2, 2), (2, 2, 2) and (1, 3, 3) kernels, a model grid with
    separate z, an oblique 4 mm input: labels on exactly the input grid, the same from the
    exported graph (ONNX Runtime) as from torch."""
    backend = "onnxruntime"
    require_module(backend)
    config = load_config(TINY)
    model_config = config.model.model_validate(
        {
            **config.model.model_dump(),
            "name": "dynunet",
            "strides": [[1, 2, 2], [2, 2, 2]],
            "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        }
    )
    pre = config.preprocess.model_copy(
        update={"spacing_mm": (4.0, 1.0, 1.0), "resample_separate_z": True}
    )
    infer = config.infer.model_copy(update={"roi_size": (6, 32, 32)})
    train = config.train.model_copy(update={"patch_size": (6, 32, 32)})
    config = config.model_validate(
        {
            **config.model_dump(),
            "model": model_config.model_dump(),
            "preprocess": pre.model_dump(),
            "infer": infer.model_dump(),
            "train": train.model_dump(),
        }
    )
    torch.manual_seed(0)
    network = build_network(config.model).eval()
    grid = Geometry((9, 45, 38), (4.0, 0.9, 1.1), (3.0, -7.0, 11.0), _oblique_direction())
    hu = _body_phantom(grid)
    image = Volume(hu, grid)
    results = {}
    for name in ("torch", backend):
        run = config.model_copy(update={"infer": config.infer.model_copy(update={"backend": name})})
        results[name] = predict(LoadedModel(network, run, {1: "tumour"}, "x"), image).array
        assert results[name].shape == grid.shape and results[name].dtype == np.uint8
    assert np.mean(results[backend] == results["torch"]) > 0.999


@pytest.mark.parametrize(("omp", "expected"), [("1", 1), (None, 2), ("", 2), ("x", 2), ("0", 2)])
def test_omp_num_threads_caps_the_configured_threads(
    monkeypatch: pytest.MonkeyPatch, omp: str | None, expected: int
) -> None:
    """infer.num_threads 2 under OMP_NUM_THREADS=1 (a scheduler's allocation, a test
    worker's share) runs the network on 1 thread; unset or not a positive integer: 2."""
    from medseg.config import capped_threads

    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert capped_threads(2) == expected
    seen: list[int] = []

    class _Recording(torch.nn.Module):
        def __init__(self, network: torch.nn.Module) -> None:
            super().__init__()
            self.network = network

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return self.network(x)

    model = _model_with({}, num_threads=2)
    model = LoadedModel(_Recording(model.network), model.config, model.label_names, "0")
    grid = Geometry((16, 32, 32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    before = torch.get_num_threads()
    predict(model, Volume(np.full(grid.shape, 50.0, np.float32), grid))
    assert seen and set(seen) == {expected}
    assert torch.get_num_threads() == before
