"""Sliding-window prediction of a label volume from an image volume, fast and memory-bounded.

One case goes through these steps (each skips itself when it has nothing to do):

1. **Windows**: placed as MONAI's ``sliding_window_inference`` places them on the whole
   image on the model grid (the image resampled to ``preprocess.spacing_mm``, if set): same
   start positions, same Gaussian/constant importance maps. Only the windows that reach into
   the body box (voxels above ``infer.body_threshold_hu``, plus a margin) are kept, and of
   those only the ones with a voxel above ``preprocess.lower_hu`` are run. Every window that
   runs therefore sees exactly MONAI's input, so skipping air changes no logit even for a
   network that normalises each window (instance norm); every voxel no window covers is
   background.
2. **Model grid**: the input of each row of windows is resampled to the model grid as it is
   needed, a few slices at a time (:func:`medseg.preprocess.resample_linear`, SimpleITK),
   never as a float copy of the whole image.
3. **Network**: windows run in batches of ``sw_batch_size`` through torch
   (``channels_last_3d``, autocast), ONNX Runtime or OpenVINO, optionally with flip
   test-time augmentation.
4. **Slab-wise aggregation**: windows are run one slab of slices at a time; the weighted logits
   of a slab (each class minus background) are summed in a buffer only ``roi_size[0]``
   slices deep, and every slice that no later window touches is handed on at once (as
   uint8 labels on the input grid); the sum of the windows' weights is computed only for
   the slices handed on, from the windows that ran. No full-size float map exists when only
   labels are asked for.
5. **Back to the input grid**: labels are pasted into the tiled region; from the model grid
   they are found by interpolating each class's logits linearly slab by slab as soon as the
   slices a slab of the input grid reads are finished, only where a label other than
   background is within one voxel (:class:`medseg.preprocess.StreamedLabels`), so the scores
   of the whole model grid are never held.

Probabilities are available on request from :func:`predict_probabilities`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, cast

import numpy as np
import torch
from monai.data.utils import compute_importance_map
from numpy.typing import NDArray

from medseg import geometry as geo
from medseg import precision, preprocess
from medseg.config import InferConfig, PreprocessConfig, capped_threads
from medseg.errors import ConfigError
from medseg.geometry import Geometry
from medseg.model import LoadedModel
from medseg.timing import StageTimes
from medseg.volume import Volume, VolumeKind

__all__ = [
    "WindowProgress",
    "predict",
    "predict_probabilities",
    "verify_precision",
    "window_starts",
]

#: Called as windows finish: (windows accounted for, windows planned). Windows of nothing
#: but air count as accounted for when they are skipped.
WindowProgress = Callable[[int, int], None]

#: A batch of windows ``(batch, 1, slice, row, column)`` -> float32 CPU logits
#: ``(batch, classes, slice, row, column)``.
_Predictor = Callable[[torch.Tensor], torch.Tensor]
#: Receives finished slices: (first slice, ``(classes - 1, slices, rows, columns)`` float32
#: scores of classes ``1..n`` minus background's).
_Sink = Callable[[int, torch.Tensor], None]

#: Logit of every foreground class relative to background where no window was run:
#: background probability 1 - 2e-9 per class after softmax; finite, so linear interpolation
#: still works.
_UNSEEN_LOGIT = -20.0

#: Finished slices handed to the sink at once (bounds the float32 copy of the summed logits).
_SINK_SLICES = 8

_AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def predict(
    model: LoadedModel,
    image: Volume,
    *,
    times: StageTimes | None = None,
    progress: WindowProgress | None = None,
) -> Volume:
    """Segment ``image`` with ``model``.

    The model's own preprocessing (``model.config.preprocess``: intensity window and, if set,
    model spacing) is applied here, so a model is always fed what it was trained on: pass the
    image in Hounsfield units, not already scaled. The steps and settings are in the module
    docstring and :class:`medseg.config.InferConfig`. Peak memory beyond the input is about
    one uint8 label volume plus ``roi_size[0]`` slices of the tiled region per class in
    float16 (and, with a model spacing, each foreground class's logit minus background's on
    the region of the model grid, in float16).

    Args:
        model: a network with its config, e.g. from :func:`medseg.model.load_checkpoint`.
        image: an ``IMAGE`` volume in HU, array order ``(slice, row, column)``, any size.
        times: receives the seconds of ``preprocess``, ``network`` and ``postprocess`` (what
            each covers: :mod:`medseg.timing`).
        progress: called after every batch of windows (:data:`WindowProgress`).

    Returns:
        A ``LABELS`` volume of ``uint8`` label values (0 = background, ``c`` =
        ``model.label_names[c]``) on exactly the geometry and source of ``image``.

    Raises:
        InputError: if ``image`` is not an ``IMAGE`` volume or contains NaN/inf.
        ConfigError: if the configured backend is not installed.
    """
    labels = _predict(model, image, "labels", times=times, progress=progress)
    return image.with_array(labels, kind=VolumeKind.LABELS)


def predict_probabilities(
    model: LoadedModel,
    image: Volume,
    dtype: type[np.floating] = np.float32,
    *,
    times: StageTimes | None = None,
    progress: WindowProgress | None = None,
) -> Volume:
    """Class probabilities (softmax of the blended logits) of ``image`` on its own grid.

    As :func:`predict`, but returns the full ``(class, slice, row, column)`` map, so it needs
    ``n_classes`` full-size arrays of ``dtype``; outside the body box background is 1.

    Args:
        model: as for :func:`predict`.
        image: an ``IMAGE`` volume in HU, array order ``(slice, row, column)``.
        dtype: ``np.float32`` or ``np.float16``.
        times, progress: as for :func:`predict`.

    Returns:
        A ``PROBABILITIES`` volume on exactly ``image``'s geometry; channel ``c`` is label
        value ``c``; channels sum to 1.
    """
    probabilities = _predict(model, image, "probabilities", dtype, times=times, progress=progress)
    return image.with_array(probabilities, kind=VolumeKind.PROBABILITIES)


def verify_precision(
    model: LoadedModel,
    images: Iterable[Volume],
    precisions: Sequence[str] | None = None,
    backends: Sequence[str] | None = None,
) -> precision.Verification:
    """Segment ``images`` in float32 and in each faster precision, and record how the labels
    of each compare with float32's (:mod:`medseg.precision`).

    Args:
        model: as for :func:`predict`; its device and other settings are kept.
        images: the verification cases (validation scans), in HU; read one at a time.
        precisions: what to compare; default the faster precisions this machine computes
            natively for each backend (:func:`medseg.precision.native_precisions`,
            possibly none). A precision given here that the machine only emulates is
            measured too (slowly); ``auto`` still uses only native ones.
        backends: the ``infer.backend`` values to verify (each against its own float32
            labels, as each computes its own float32); default the model's own.

    Returns:
        The verification, to keep in the checkpoint (:func:`medseg.model.with_extra`).

    Raises:
        InputError: as :func:`predict`, for a bad image.
        ConfigError: if a precision cannot run on the model's device (float16 on a CPU), or
            a backend is unknown or not installed.
    """
    device = precision.model_device(model)
    chosen = tuple(backends or (model.config.infer.backend,))
    for backend in chosen:
        if backend not in ("torch", "onnxruntime", "openvino"):
            raise ConfigError(
                f"cannot verify backend {backend!r}: expected torch, onnxruntime or openvino"
            )
    if device == "cuda" and any(b != "torch" for b in chosen):
        raise ConfigError("on CUDA only the torch backend runs; verify backend torch")
    native = precision.native_precisions(device, model.config.infer.backend)
    wanted = {
        b: tuple(precision.native_precisions(device, b) if precisions is None else precisions)
        for b in chosen
    }
    unknown = [p for ps in wanted.values() for p in ps if p not in ("bfloat16", "float16")]
    if unknown:
        raise ConfigError(f"cannot verify precision {unknown[0]!r}: expected bfloat16 or float16")
    if not any(wanted.values()):  # nothing faster to verify: no case is read
        return precision.Verification(records=(), cases=0, native=native)
    per_case: dict[tuple[str, str], list[dict[str, tuple[float, float]]]] = {
        (b, p): [] for b, ps in wanted.items() for p in ps
    }
    cases = 0
    for image in images:
        cases += 1
        for backend, names in wanted.items():
            if not names:
                continue
            on = model.with_infer(backend=backend)
            reference = precision.with_precision(on, precision.REFERENCE)
            labels = np.asarray(predict(reference, image).array)
            for name in names:
                other = np.asarray(predict(precision.with_precision(on, name), image).array)
                per_case[backend, name].append(
                    precision.compare_labels(labels, other, model.label_names)
                )
    records = tuple(
        precision.summarise(
            name, backend, device, compared, precision.inference_settings(model.config.infer)
        )
        for (backend, name), compared in per_case.items()
    )
    return precision.Verification(records=records, cases=cases, native=native)


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """First voxel of every window along one axis, exactly as MONAI places them.

    The step is ``int(roi * (1 - overlap))`` (at least 1); the last window is moved back to
    end at the image's edge. ``size`` must be at least ``roi``.

    Example:
        >>> window_starts(200, 96, 0.25)
        [0, 72, 104]
    """
    if roi >= size:
        return [0]
    step = max(1, int(roi * (1 - overlap)))
    count = next(d for d in range(size) if d * step + roi >= size) + 1
    return [min(d * step, size - roi) for d in range(count)]


# ---------------------------------------------------------------------------------------------
# one case


def _predict(
    model: LoadedModel,
    image: Volume,
    want: Literal["labels", "probabilities"],
    dtype: type[np.floating] = np.float32,
    *,
    times: StageTimes | None,
    progress: WindowProgress | None,
) -> NDArray[np.generic]:
    """The prediction; ``times`` gets preprocess and network as measured inside, and the rest
    of the call as postprocess."""
    started = time.perf_counter()
    inner = StageTimes()
    try:
        with inner.stage("preprocess"):
            preprocess.require_finite_image(image, "prediction")
            canonical, reorientation = image, None
            if model.config.preprocess.orientation == "LPS":
                canonical, reorientation = preprocess.reorient(image)
                if reorientation.is_identity:
                    canonical, reorientation = image, None
        # predict on the canonical view, then map back
        out = _predict_on_grid(model, canonical, want, dtype, inner, progress)
        if reorientation is not None:
            out = np.ascontiguousarray(reorientation.restore(out))
        return out
    finally:
        if times is not None:
            inside = inner.total("preprocess") + inner.total("network")
            times.add("preprocess", inner.total("preprocess"))
            times.add("network", inner.total("network"))
            times.add("postprocess", max(0.0, time.perf_counter() - started - inside))


def _predict_on_grid(
    model: LoadedModel,
    image: Volume,
    want: Literal["labels", "probabilities"],
    dtype: type[np.floating],
    times: StageTimes,
    progress: WindowProgress | None,
) -> NDArray[np.generic]:
    infer, pre = model.config.infer, model.config.preprocess
    with times.stage("preprocess"):
        normalise = preprocess.normaliser(image.array, pre)  # statistics of the whole image
    n_classes = 1 + len(model.label_names)
    shape = image.geometry.shape
    if want == "labels":
        out: NDArray[np.generic] = np.zeros(shape, dtype=np.uint8)
    else:
        out = np.zeros((n_classes, *shape), dtype=dtype)
        out[0] = 1.0
    grid = image.geometry
    if pre.spacing_mm is not None:
        grid = preprocess.model_grid(image.geometry, pre.spacing_mm)
    resampled = not geo.geometries_equal(grid, image.geometry)
    with times.stage("preprocess"):
        tiling = _tiling(image, grid, infer)
    if tiling is None:  # nothing above the body threshold: all background
        return out
    (start, stop), starts = tiling
    region = geo.crop_geometry(grid, start, stop)
    hu = np.asarray(image.array)

    def slab_of(first: int, last: int, out: NDArray[np.float32]) -> None:
        """HU of slices ``first:last`` of the region, on the model grid, written to ``out``."""
        with times.stage("preprocess"):
            if not resampled:
                out[...] = hu[
                    start[0] + first : start[0] + last, start[1] : stop[1], start[2] : stop[2]
                ]
                return
            for part in range(first, last, preprocess.SCORE_SLAB_SLICES):  # small input copies
                end = min(last, part + preprocess.SCORE_SLAB_SLICES)
                slab = geo.crop_geometry(region, (part, 0, 0), (end, *region.shape[1:]))
                out[part - first : end - first] = preprocess.resample_linear(
                    hu, image.geometry, slab, separate_z=pre.resample_separate_z
                )

    inside = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    with _inference_settings(model) as predictor:
        if want == "labels" and not resampled:
            target = out[inside]

            def to_labels(first: int, relative: torch.Tensor) -> None:
                labels = _argmax_uint8(relative)
                target[first : first + labels.shape[0]] = labels

            _sliding_window(
                slab_of,
                region.shape,
                starts,
                pre,
                infer,
                n_classes,
                predictor,
                to_labels,
                normalise,
                divide=False,
                times=times,
                progress=progress,
            )
            return out
        # labels need only each class's score minus background's: one channel less to keep,
        # and on the model grid they are interpolated onto the input's as the slices come
        # (the input voxels inside the region: none, and there is nothing to predict)
        covered = _covered_box(image.geometry, region) if resampled else None
        if resampled and covered is None:
            return out
        stream = None
        if want == "labels" and covered is not None:  # labels: always resampled here
            on_input = tuple(slice(a, b) for a, b in zip(*covered, strict=True))
            stream = preprocess.StreamedLabels(
                region,
                geo.crop_geometry(image.geometry, *covered),
                cast("NDArray[np.uint8]", out[on_input]),  # a view: labels are uint8
                relative_to_background=True,
                separate_z=pre.resample_separate_z,
            )
        else:
            scores = np.zeros((n_classes, *region.shape), dtype=np.float16)

        def keep(first: int, block: torch.Tensor) -> None:
            if stream is not None:
                stream.add(first, block.to(torch.float16).numpy())
                return
            if want == "probabilities":  # softmax does not change when every logit shifts
                block = torch.softmax(torch.cat([torch.zeros_like(block[:1]), block]), dim=0)
            # torch casts to float16 on every thread, numpy's assignment on one
            scores[:, first : first + block.shape[1]] = block.to(torch.float16).numpy()

        _sliding_window(
            slab_of,
            region.shape,
            starts,
            pre,
            infer,
            n_classes,
            predictor,
            keep,
            normalise,
            divide=True,
            times=times,
            progress=progress,
        )

    if stream is not None:
        stream.finish()
        return out
    if covered is None:  # not resampled
        out[:, inside[0], inside[1], inside[2]] = scores
        return out
    back = geo.crop_geometry(image.geometry, *covered)
    on_input = tuple(slice(a, b) for a, b in zip(*covered, strict=True))
    box_of_out = out[:, on_input[0], on_input[1], on_input[2]]  # a view
    for label in range(n_classes):
        box_of_out[label] = preprocess.resample_linear(
            scores[label], region, back, separate_z=pre.resample_separate_z
        )
    box_of_out[...] = box_of_out / box_of_out.sum(axis=0, keepdims=True)  # sum 1 again
    return out


def _argmax_uint8(relative: torch.Tensor) -> NDArray[np.uint8]:
    """Argmax as uint8 over background (score 0) and ``relative``'s classes ``1..n`` (their
    scores minus background's), ties to the lower label (torch's argmax over a strided block
    of a few classes is an order of magnitude slower than this running max)."""
    best = torch.zeros(relative.shape[1:], dtype=relative.dtype)
    labels = torch.zeros(best.shape, dtype=torch.uint8)
    for label in range(1, relative.shape[0] + 1):
        score = relative[label - 1].contiguous()
        labels.masked_fill_(score > best, label)
        torch.maximum(best, score, out=best)
    return labels.numpy()


#: ``((start, stop), window starts per axis relative to start)`` on the model grid.
_Tiling = tuple[tuple[tuple[int, int, int], tuple[int, int, int]], list[list[int]]]


def _tiling(image: Volume, grid: Geometry, infer: InferConfig) -> _Tiling | None:
    """MONAI's windows on the whole model grid that reach into the body box, and their region.

    The windows are those ``sliding_window_inference`` would place on the whole image
    resampled to ``grid`` (:func:`window_starts`); only the ones that overlap the body box
    (voxels above ``infer.body_threshold_hu``, plus ``infer.body_margin_mm``) are kept, and the
    region is the box they cover. Each window therefore sees exactly the input MONAI's would,
    so cropping changes no window's logits. ``None`` if no voxel is above the threshold.
    Along an axis where the grid is smaller than the window, the region is the whole axis and
    the window starts at 0 of the padded axis (MONAI pads it symmetrically).
    """
    roi = infer.roi_size
    if infer.body_threshold_hu is None:
        body = ((0, 0, 0), image.geometry.shape)
    else:
        found = preprocess.body_box(image, infer.body_threshold_hu, infer.body_margin_mm)
        if found is None:
            return None
        body = found
    lowest, highest = geo.index_box_in(image.geometry, body[0], [b - 1 for b in body[1]], grid)
    start, stop, starts = [0, 0, 0], [0, 0, 0], []
    for axis in range(3):
        n = grid.shape[axis]
        if n <= roi[axis]:
            stop[axis] = n
            starts.append([0])
            continue
        low = math.floor(lowest[axis] + 1e-6)
        high = math.floor(highest[axis] + 1e-6) + 2  # exclusive, one voxel to spare
        chosen = [
            s
            for s in window_starts(n, roi[axis], infer.overlap)
            if s < high and s + roi[axis] > low
        ]
        start[axis], stop[axis] = chosen[0], chosen[-1] + roi[axis]
        starts.append([s - chosen[0] for s in chosen])
    return ((start[0], start[1], start[2]), (stop[0], stop[1], stop[2])), starts


def _covered_box(
    image: Geometry, region: Geometry
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """The input voxels whose centres lie inside ``region`` (a box of the model grid)."""
    lowest, highest = geo.index_box_in(region, (0, 0, 0), [n - 1 for n in region.shape], image)
    start, stop = [], []
    for axis in range(3):
        start.append(max(0, math.ceil(lowest[axis] - 1e-6)))
        stop.append(min(image.shape[axis], math.floor(highest[axis] + 1e-6) + 1))
    if any(a >= b for a, b in zip(start, stop, strict=True)):
        return None
    return (start[0], start[1], start[2]), (stop[0], stop[1], stop[2])


# ---------------------------------------------------------------------------------------------
# the sliding window


def _sliding_window(
    slab_of: Callable[[int, int, NDArray[np.float32]], None],
    size: tuple[int, int, int],
    starts: list[list[int]],
    pre: PreprocessConfig,
    infer: InferConfig,
    n_classes: int,
    predictor: _Predictor,
    sink: _Sink,
    normalise: preprocess.Normaliser,
    *,
    divide: bool,
    times: StageTimes,
    progress: WindowProgress | None,
) -> None:
    """Run the windows at ``starts`` over a region of ``size`` and hand finished slices to
    ``sink`` in order.

    ``slab_of(first, last, out)`` writes the HU of slices ``first:last`` of the region into
    ``out`` (float32), fetched one window row at a time: the slices the next row shares with
    this one are kept (normalised) and only the new ones fetched, so each slice is resampled
    and normalised once however much the rows overlap. ``normalise`` maps them to network
    input, in place. ``sink`` gets, per voxel, the weighted sum of each foreground class's
    logit minus background's (softmax and argmax depend only on these differences, and one
    channel fewer is kept and added), divided by the sum of weights when ``divide`` (argmax
    does not need the division: the weights are the same for every class). Along an axis
    shorter than the window the region is padded symmetrically with air (``normalise.air_hu``:
    ``lower_hu``, 0 after the CT window, as MONAI pads; the image minimum for
    ``"image_zscore"``, as training pads) and the padding is cut off again before ``sink``
    sees it. ``times`` gets the network's seconds and the input's (slabs, normalisation);
    ``progress`` is told after every batch.
    """
    roi = infer.roi_size
    before = [max(0, r - s) // 2 for r, s in zip(roi, size, strict=True)]
    pad = [(b, max(0, r - s) - b) for b, r, s in zip(before, roi, size, strict=True)]
    padded = [s + a + b for s, (a, b) in zip(size, pad, strict=True)]
    lower = np.float32(pre.lower_hu)  # the air threshold, in every intensity mode
    air = np.float32(normalise.air_hu)
    # constant blending weighs every window 1 (MONAI's map is all ones): its logits are
    # added as they are and the weight of a voxel is the count of windows covering it
    constant = infer.blend == "constant"
    weight = compute_importance_map(tuple(roi), mode=infer.blend, device="cpu")
    depth, rows, columns = roi[0], padded[1], padded[2]
    # the sum holds classes 1..n minus background: n - 1 channels. In float32 where that
    # takes no more bytes than n channels of float16 (two classes): adding a window to
    # float32 costs 0.18 against 1.6 ms for float16 (2 x 96^3 window, 2 cores); with more
    # classes float16, as the memory bound is the tighter target. Windows are added without
    # a weighted copy (plain add for constant blending, addcmul for Gaussian: 2.5 ms
    # against 4.5 ms for multiply-then-add)
    channels = n_classes - 1
    sum_type = torch.float32 if 4 * channels <= 2 * n_classes else torch.float16
    summed = torch.zeros((channels, depth, rows, columns), dtype=sum_type)
    difference = torch.empty((channels, *roi))  # a window's classes minus its background
    # the windows run so far whose slices are not all handed over yet: (first slice, corners);
    # the sum of weights of a block is computed from them when it is handed over, so no
    # buffer of weights the size of the sum is kept (MONAI's count map)
    run: list[tuple[int, list[tuple[int, int]]]] = []
    plane = list(itertools.product(starts[1], starts[2]))
    keep_rows = slice(before[1], before[1] + size[1])
    keep_columns = slice(before[2], before[2] + size[2])
    planned, accounted = len(starts[0]) * len(plane), 0
    rows_first = [max(0, z - before[0]) for z in starts[0]]
    # one row's network input, normalised: the slices the next row shares stay, moved to
    # the front, and only the new ones are fetched and normalised (in place). The padding
    # (along an axis shorter than the window: then there is one row per axis) is air from
    # the start and never written
    air_input = normalise(np.full(1, air, dtype=np.float32))[0]
    slab = np.full((depth, rows, columns), air_input, dtype=np.float32)
    # a window of nothing but air (every input voxel at or below lower_hu, a constant after
    # scaling in the modes that clip there) is not run: its voxels get background unless
    # another window covers them. Such a window is numerically meaningless anyway: instance
    # normalisation of a constant input amplifies float rounding to arbitrary logits. Tested
    # on the input in HU before it is normalised, kept per voxel beside it (a byte each) and
    # projected along the slices: one 2-D look-up per window
    above_air = None
    if infer.body_threshold_hu is not None:
        above_air = np.full((depth, rows, columns), bool(air > lower))
    # the previous row's last region slice and its offset: its slices from this row's first
    # on are in the buffers
    fetched_until, offset_before = 0, 0
    tensor = torch.from_numpy(slab)  # the same memory
    above_air_tensor = None if above_air is None else torch.from_numpy(above_air)

    for index, z in enumerate(starts[0]):
        offset = z - before[0]  # region slice s is slab slice s - offset
        first, last = rows_first[index], min(size[0], z + depth - before[0])
        kept = max(0, min(last, fetched_until) - first)
        if kept:
            moved, to = first - offset_before, first - offset
            for kept_buffer in (tensor, above_air_tensor):
                if kept_buffer is not None:
                    _move_slices(kept_buffer, moved, kept, to, axis=0)
        new = (slice(first + kept - offset, last - offset), keep_rows, keep_columns)
        slab_of(first + kept, last, slab[new])  # kept <= last - first: rows end in order
        input_started = time.perf_counter()
        if above_air is not None:
            np.greater(slab[new], lower, out=above_air[new])
        normalise.in_place(slab[new])
        fetched_until, offset_before = last, offset
        corners_in_slab = plane
        if above_air is not None:
            above = np.asarray(above_air.any(axis=0))
            corners_in_slab = [
                (y, x) for y, x in plane if bool(above[y : y + roi[1], x : x + roi[2]].any())
            ]
        times.add("preprocess", time.perf_counter() - input_started)
        accounted += len(plane) - len(corners_in_slab)  # air windows: skipped
        run.append((z, corners_in_slab))
        if progress is not None and not corners_in_slab:
            progress(accounted, planned)
        for at in range(0, len(corners_in_slab), infer.sw_batch_size):
            corners = corners_in_slab[at : at + infer.sw_batch_size]
            batch = torch.stack(
                [tensor[:, y : y + roi[1], x : x + roi[2]] for y, x in corners]
            ).unsqueeze(1)
            with times.stage("network"):
                logits = predictor(batch)
            accounted += len(corners)
            if progress is not None:
                progress(accounted, planned)
            for (y, x), window in zip(corners, logits, strict=True):
                view = summed[:, :, y : y + roi[1], x : x + roi[2]]
                torch.sub(window[1:], window[0], out=difference)
                if constant:
                    view.add_(difference)
                else:
                    view.addcmul_(difference, weight)
            del batch, logits
        # slices before the next window row are final; handed over a few at a time, so the
        # float32 copy of the block is small
        done = (starts[0][index + 1] if index + 1 < len(starts[0]) else z + depth) - z
        lo, hi = max(z, before[0]), min(z + done, before[0] + size[0])  # unpadded slices
        for part in range(lo, hi, _SINK_SLICES):
            end = min(hi, part + _SINK_SLICES)
            block = summed[:, part - z : end - z, keep_rows, keep_columns]
            block = block.to(torch.float32, copy=True)  # never a view of the sum
            if divide:
                sums = _weight_sums(run, part, end, weight, (rows, columns), constant=constant)
                sums = sums[:, keep_rows, keep_columns]
                unseen = sums == 0  # only skipped windows cover these: background
                block /= sums.clamp(min=1e-6)
                block[:, unseen] = _UNSEEN_LOGIT
            sink(part - before[0], block)
        # the slices the next row shares move to the front; rows now handed over are dropped
        _shift_slices(summed, done, axis=1)
        run = [(first_slice, c) for first_slice, c in run if first_slice + depth > z + done]


def _weight_sums(
    run: list[tuple[int, list[tuple[int, int]]]],
    first: int,
    last: int,
    weight: torch.Tensor,
    plane: tuple[int, int],
    *,
    constant: bool,
) -> torch.Tensor:
    """Sum of the blending ``weight`` of every window in ``run`` over slices ``first:last``
    of the (padded) region: ``(slices, rows, columns)`` float32, exact for window counts.

    Computed per handed-over block rather than added into a buffer as large as the sum.
    With ``constant`` weights (all ones) a row's windows add the same count of windows per
    column to every slice they cover: one plane of counts per row, added to those slices.
    MONAI's Gaussian map is not separable (``compute_importance_map`` clamps it at 1e-3), so
    each window's weight is added as it is (once in all, split over the blocks it reaches).
    """
    sums = torch.zeros((last - first, *plane))
    depth, rows, columns = weight.shape
    for z, corners in run:
        lo, hi = max(first, z), min(last, z + depth)
        if lo >= hi or not corners:
            continue
        target = sums[lo - first : hi - first]
        if constant:
            counts = torch.zeros(plane)
            for y, x in corners:
                counts[y : y + rows, x : x + columns] += 1.0
            target += counts
            continue
        part = weight[lo - z : hi - z]
        for y, x in corners:
            target[:, y : y + rows, x : x + columns].add_(part)
    return sums


def _shift_slices(buffer: torch.Tensor, done: int, axis: int) -> None:
    """Move ``buffer``'s slices along ``axis`` from ``done`` on to the front and zero the
    rest (:func:`_move_slices`)."""
    depth = buffer.shape[axis]
    _move_slices(buffer, done, depth - done, 0, axis)
    buffer.narrow(axis, depth - done, done).zero_()


def _move_slices(
    buffer: torch.Tensor, source: int, count: int, destination: int, axis: int
) -> None:
    """Copy ``count`` slices along ``axis`` from ``source`` on to ``destination`` (not after
    ``source``) without a temporary: front to back, at most ``source - destination`` slices
    at a time, so no copy reads a slice an earlier one wrote (the last row of windows, moved
    back to end at the edge, can overlap the one before by all but a few slices: a
    temporary would be nearly a whole buffer)."""
    if count <= 0 or source == destination:
        return
    chunk = source - destination
    for at in range(0, count, chunk):
        n = min(chunk, count - at)
        buffer.narrow(axis, destination + at, n).copy_(buffer.narrow(axis, source + at, n))


# ---------------------------------------------------------------------------------------------
# backends


@contextlib.contextmanager
def _inference_settings(model: LoadedModel) -> Iterator[_Predictor]:
    """The configured predictor; thread count, memory format and mode are restored after.
    ``infer.precision: auto`` is resolved here (:func:`medseg.precision.choose`)."""
    if model.config.infer.precision == "auto":
        model = precision.with_precision(model, precision.choose(model)[0])
    infer = model.config.infer
    network = model.network
    device = next(network.parameters()).device
    threads = torch.get_num_threads()
    was_training = network.training
    channels_last = infer.channels_last and infer.backend == "torch"
    network.eval()
    threads_wanted = None if infer.num_threads is None else capped_threads(infer.num_threads)
    if threads_wanted is not None:
        torch.set_num_threads(threads_wanted)
    try:
        if infer.backend == "torch":
            if channels_last:
                network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
            predictor = _torch_predictor(network, device, infer, channels_last)
        else:
            from medseg.runtime import onnx_predictor

            session = onnx_predictor(
                network,
                infer.backend,
                infer.roi_size,
                precision=infer.precision,
                num_threads=threads_wanted,
                batch_size=infer.sw_batch_size,
            )

            def predictor(batch: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(session(batch.numpy()))

        with torch.inference_mode():
            yield _with_flips(predictor, infer.flip_tta)
    finally:
        if channels_last:
            network.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        network.train(was_training)
        torch.set_num_threads(threads)


def _torch_predictor(
    network: torch.nn.Module, device: torch.device, infer: InferConfig, channels_last: bool
) -> _Predictor:
    autocast_dtype = _AUTOCAST_DTYPES.get(infer.precision)
    if autocast_dtype is torch.float16 and device.type == "cpu":
        raise ConfigError("infer.precision 'float16' needs a CUDA device; use 'bfloat16' on CPU")
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format

    def run(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with torch.autocast(
            device_type=device.type,
            dtype=autocast_dtype or torch.float32,
            enabled=autocast_dtype is not None,
        ):
            logits = network(batch)
        return logits.float().cpu().contiguous()  # channels-last out: summing wants contiguous

    return run


def _with_flips(predictor: _Predictor, axes: Sequence[int]) -> _Predictor:
    """``predictor`` averaged over the image flipped along every non-empty subset of ``axes``."""
    if not axes:
        return predictor
    flips = [
        [2 + a for a in combo]
        for n in range(1, len(axes) + 1)
        for combo in itertools.combinations(axes, n)
    ]

    def run(batch: torch.Tensor) -> torch.Tensor:
        total = predictor(batch)
        for dims in flips:
            total += torch.flip(predictor(torch.flip(batch, dims)), dims)
        return total / (1 + len(flips))

    return run
