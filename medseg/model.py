"""Networks built from config, and checkpoints that carry their own config.

A checkpoint is a plain dict of tensors and primitives written with ``torch.save`` and read
with ``torch.load(..., weights_only=True)``, so loading an untrusted checkpoint cannot run
code. It holds the network weights, the full :class:`~medseg.config.ExperimentConfig` (so a
model is always applied with the intensity window and labels it was trained with), the label
names and the medseg version that wrote it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import math
import pickle
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from monai.networks.nets import DynUNet, UNet
from pydantic import ValidationError

import medseg
from medseg.config import ExperimentConfig, ModelConfig
from medseg.errors import ModelError
from medseg.io.files import atomic_path
from medseg.structures import Structure

#: ONNX opset of :func:`export_onnx`. 18 is the lowest that torch's ``torch.export``-based
#: exporter has its operators for: it converts a graph for a lower one afterwards, with a
#: warning, and the conversion may fail. ONNX Runtime >= 1.14 and OpenVINO (>= 2025.0, the
#: minimum in pyproject.toml) read it; tests/test_model.py runs the graph in both.
ONNX_OPSET = 18
#: The most weight bytes :func:`export_onnx` writes: one ``.onnx`` file is one protobuf
#: message, at most 2 GiB. Larger weights would need an external-data file beside the graph.
ONNX_MAX_WEIGHT_BYTES = 2**31
#: Windows in the example batch the network is captured with: ``torch.export`` fixes a size
#: it sees as 0 or 1, so an example of 1 would not leave the batch size free.
_EXPORT_EXAMPLE_BATCH = 2

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "ENSEMBLE_TRAINING_SECTIONS",
    "ONNX_MAX_WEIGHT_BYTES",
    "ONNX_OPSET",
    "FoldEnsemble",
    "LoadedModel",
    "SubPixelConvTranspose3d",
    "build_network",
    "export_onnx",
    "load_checkpoint",
    "load_ensemble",
    "load_training_state",
    "save_checkpoint",
    "subpixel_supported",
    "with_extra",
    "with_subpixel_upsampling",
]

#: Written into every checkpoint so that a foreign ``.pt`` file is refused with a clear message.
CHECKPOINT_FORMAT = "medseg-checkpoint"
#: Bumped when the checkpoint layout changes incompatibly.
CHECKPOINT_FORMAT_VERSION = 1

#: Values allowed in a checkpoint's ``extra`` mapping (all loadable with ``weights_only=True``).
ExtraValue = int | float | str | bool | None


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A network ready for inference, with the config it was trained with.

    Attributes:
        network: the torch module (in eval mode after :func:`load_checkpoint`).
        config: the experiment config stored in the checkpoint.
        label_names: label value -> structure name (background 0 excluded).
        medseg_version: version of medseg that wrote the checkpoint.
        extra: primitives stored alongside (e.g. ``epoch``, ``val_dice``).
        source_path: the checkpoint file it was loaded from (an input that outputs must
            never overwrite), if any; for an ensemble, the folder holding its folds.
        folds: for a k-fold ensemble (:func:`load_ensemble`), the checkpoint of each fold in
            fold order; empty for a single network.
    """

    network: torch.nn.Module
    config: ExperimentConfig
    label_names: dict[int, str]
    medseg_version: str
    extra: Mapping[str, ExtraValue] = field(default_factory=dict)
    source_path: Path | None = None
    folds: tuple[Path, ...] = ()

    @property
    def structures(self) -> tuple[Structure, ...]:
        """The structures the network segments (from its config), in label order."""
        return self.config.model.labels

    def with_infer(self, **changes: Any) -> LoadedModel:
        """This model with the ``infer`` settings in ``changes`` replaced (weights, extra and
        source shared: a precision verification in ``extra`` stays with the copy).

        Example: ``model.with_infer(backend="openvino", precision="float32")``.
        """
        infer = self.config.infer.model_copy(update=changes)
        return dataclasses.replace(self, config=self.config.model_copy(update={"infer": infer}))


#: Most parameters a network may have (2 GiB of float32 weights; nnU-Net's largest residual
#: encoder U-Net has about 100 M). A config (or a checkpoint's config) that declares more is
#: refused before anything is allocated, instead of asking the allocator for hundreds of GB.
MAX_NETWORK_PARAMETERS = 500_000_000


def count_parameters(config: ModelConfig) -> int:
    """The number of parameters of :func:`build_network`'s network, counted on PyTorch's
    ``meta`` device (shapes only, no memory)."""
    with torch.device("meta"):
        network = _construct(config)
    return sum(p.numel() for p in network.parameters())


def build_network(config: ModelConfig) -> UNet | DynUNet:
    """A MONAI 3D U-Net or DynUNet: 1 input channel, ``1 + len(config.labels)`` output logits.

    Inputs are ``(batch, 1, slice, row, column)``; each spatial size must be a multiple of
    ``config.downsampling_factor`` along its axis (per-axis strides such as ``(1, 2, 2)`` keep
    thick slices unpooled). A ``DynUNet`` with deep supervision returns, in training
    mode, ``(batch, 1 + deep_supervision_levels, classes, slice, row, column)`` (full
    resolution first); in eval mode both return ``(batch, classes, slice, row, column)``.

    Raises:
        ModelError: the network would have more than :data:`MAX_NETWORK_PARAMETERS`
            parameters (checked before any weight is allocated).
    """
    n_parameters = count_parameters(config)
    if n_parameters > MAX_NETWORK_PARAMETERS:
        raise ModelError(
            f"model.channels {list(config.channels)} declare a {config.name} of {n_parameters} "
            f"parameters ({n_parameters * 4 / 2**30:.3g} GiB of float32 weights), over the limit "
            f"of {MAX_NETWORK_PARAMETERS} (medseg.model.MAX_NETWORK_PARAMETERS)"
        )
    return _construct(config)


def _construct(config: ModelConfig) -> UNet | DynUNet:
    # Entries stay as written (an int or a per-axis triple): int-stride configs build the very
    # network they built before per-axis strides existed.
    if config.name == "dynunet":
        levels = len(config.channels)
        return DynUNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=1 + len(config.labels),
            kernel_size=list(config.kernel_sizes or [3] * levels),
            strides=[1, *config.strides],
            upsample_kernel_size=list(config.strides),
            filters=list(config.channels),
            norm_name="instance",
            deep_supervision=config.deep_supervision,
            deep_supr_num=config.deep_supervision_levels,
            res_block=config.num_res_units > 0,
        )
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1 + len(config.labels),
        channels=config.channels,
        # typed Sequence[int], but each stride goes to a Convolution that takes per-axis
        # strides too (tests/test_model.py checks every level's shape)
        strides=cast(Sequence[int], config.strides),
        num_res_units=config.num_res_units,
    )


def save_checkpoint(
    path: Path,
    network: torch.nn.Module,
    config: ExperimentConfig,
    extra: Mapping[str, ExtraValue] | None = None,
    *,
    training_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``network``'s weights with ``config`` to ``path`` atomically.

    Args:
        path: the ``.pt`` file to write (parent folders are created).
        network: a network built by :func:`build_network` from ``config.model``.
        config: the experiment config the network was trained with.
        extra: primitives to store alongside (epoch, metrics); no patient data.
        training_state: what resuming needs (optimizer, scheduler, RNG states), made of
            tensors, primitives, lists and dicts only; read back by
            :func:`load_training_state`.

    Returns:
        ``path``.

    Raises:
        ModelError: if ``extra`` holds something other than int/float/str/bool/None.
    """
    extra = dict(extra or {})
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, ExtraValue):
            raise ModelError(
                f"{path}: checkpoint extra values must be int/float/str/bool/None, "
                f"got {key!r}: {type(value).__name__}"
            )
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "medseg_version": medseg.__version__,
        "config": config.model_dump(),
        "label_names": config.model.label_names,
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "extra": extra,
    }
    if training_state is not None:
        payload["training_state"] = dict(training_state)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def with_extra(source: Path, out: Path, extra: Mapping[str, ExtraValue]) -> Path:
    """Write ``source``'s checkpoint to ``out`` atomically with ``extra`` merged into its
    ``extra`` (weights, config and training state unchanged); ``out`` may be ``source``.

    Raises:
        ModelError: as :func:`load_checkpoint` for ``source``, or for a value of ``extra``
            other than int/float/str/bool/None.
    """
    source, out = Path(source), Path(out)
    load_checkpoint(source)  # refuses anything but a readable medseg checkpoint
    payload = _read_plain_data(source)
    merged = {**payload.get("extra", {}), **extra}
    for key, value in merged.items():
        if not isinstance(key, str) or not isinstance(value, ExtraValue):
            raise ModelError(
                f"{out}: checkpoint extra values must be int/float/str/bool/None, "
                f"got {key!r}: {type(value).__name__}"
            )
    payload["extra"] = merged
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    return out


def load_checkpoint(path: Path, *, device: str = "cpu") -> LoadedModel:
    """Load a checkpoint written by :func:`save_checkpoint`, without unpickling code.

    Args:
        path: the ``.pt`` file.
        device: where to put the network (``"cpu"`` or ``"cuda"``).

    Returns:
        The network in eval mode on ``device``, with its config and label names.

    Raises:
        ModelError: if the file is missing, is not a medseg checkpoint, holds anything but
            tensors and primitives, has an invalid config, or its weights do not fit the
            network its config describes.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    payload = _read_plain_data(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path}: not a medseg checkpoint (no format={CHECKPOINT_FORMAT!r})")
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise ModelError(
            f"{path}: checkpoint format version {version!r}, this medseg reads "
            f"{CHECKPOINT_FORMAT_VERSION}"
        )
    try:
        config = ExperimentConfig.model_validate(payload["config"])
    except (ValidationError, KeyError) as exc:
        raise ModelError(f"{path}: checkpoint config is invalid: {exc}") from exc
    try:
        network = build_network(config.model)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    try:
        network.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError) as exc:
        raise ModelError(f"{path}: weights do not fit the network in its config: {exc}") from exc
    network.to(device).eval()
    return LoadedModel(
        network=network,
        config=config,
        label_names=config.model.label_names,
        medseg_version=str(payload.get("medseg_version", "unknown")),
        extra=dict(payload.get("extra", {})),
        source_path=path,
    )


def _read_plain_data(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors, containers and primitives, never code.

    A checkpoint from an untrusted source (a download, a colleague's ``.pt``) is safe to
    pass here: anything else pickled inside (a class, a function such as ``os.system``) is
    refused before it is created. medseg never loads with ``weights_only=False``.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests weights_only=False; never do that for a foreign file
        found = re.search(r"Unsupported global: GLOBAL ([\w.]{1,200})", str(exc))
        raise ModelError(
            f"{path}: refused to load: it holds objects other than tensors and primitives "
            f"({found.group(1) if found else type(exc).__name__}); medseg loads checkpoints "
            "with weights_only=True, so a file cannot run code when loaded"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable torch checkpoint: {exc}") from exc


def load_training_state(path: Path) -> dict[str, Any]:
    """The ``training_state`` stored by :func:`save_checkpoint` (without unpickling code).

    Raises:
        ModelError: if the file is unreadable or holds no training state.
    """
    payload = _read_plain_data(Path(path))
    if not isinstance(payload, dict) or not isinstance(payload.get("training_state"), dict):
        raise ModelError(f"{path}: checkpoint holds no training state to resume from")
    return dict(payload["training_state"])


# ---------------------------------------------------------------------------------------------
# k-fold ensembles

#: Config sections a fold may have of its own: they only say how it was trained. Every other
#: section (structures and network, preprocessing, inference, post-processing, export, series
#: selection, ingest, batch, privacy) decides how the model is applied, so the folds of an
#: ensemble must agree in all of it.
ENSEMBLE_TRAINING_SECTIONS = ("seed", "data", "train", "tracking")


class FoldEnsemble(torch.nn.Module):
    """The networks of k cross-validation folds as one network, for inference.

    ``forward`` maps ``(batch, 1, slice, row, column)`` to ``log(mean_k softmax(net_k(x)))``,
    float32 ``(batch, classes, slice, row, column)``: log-probabilities, so that everything
    after the network treats them as logits and stays as it is (sliding-window blending,
    flip averaging, the ONNX export, argmax, and the softmax that gives probabilities back:
    ``softmax(log p) = p``). The folds are averaged in probability as nnU-Net averages its
    folds, computed as a running ``logaddexp`` of each fold's ``log_softmax`` (stable, and
    only two outputs in memory at once). It costs k times one network's time and weights.

    Args:
        networks: the fold networks (from :func:`build_network`), all on one device.

    Raises:
        ValueError: if ``networks`` is empty.
    """

    def __init__(self, networks: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        if not networks:
            raise ValueError("a FoldEnsemble needs at least one network")
        self.folds = torch.nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # a deep-supervision DynUNet returns a stack of outputs in train mode
            raise RuntimeError("FoldEnsemble is for inference: call .eval() first")
        total: torch.Tensor | None = None
        for network in self.folds:
            log_p = torch.log_softmax(network(x).float(), dim=1)
            total = log_p if total is None else torch.logaddexp(total, log_p)
        assert total is not None  # at least one fold: checked in __init__
        return total - math.log(len(self.folds))


def load_ensemble(
    checkpoints: Sequence[Path], *, device: str = "cpu", source_path: Path | None = None
) -> LoadedModel:
    """The checkpoints of k folds as one model whose network is their :class:`FoldEnsemble`.

    Every fold is loaded as :func:`load_checkpoint` loads it, onto the same ``device``. The
    model takes the first fold's config; the folds must agree in every section of it except
    the training-only ones (:data:`ENSEMBLE_TRAINING_SECTIONS`).

    Args:
        checkpoints: one ``.pt`` file per fold, in fold order.
        device: where to put the networks (``"cpu"`` or ``"cuda"``).
        source_path: the folder the folds were found in (recorded as the model's
            ``source_path``; default: the first checkpoint's folder).

    Returns:
        The ensemble, with ``folds`` listing the checkpoints and ``extra["folds"]`` = k.

    Raises:
        ModelError: if ``checkpoints`` is empty, a fold cannot be loaded, two folds' configs
            differ in what applies them (the message names the first differing setting and
            both files), or, for an ONNX backend, the folds' weights together exceed
            :data:`ONNX_MAX_WEIGHT_BYTES`.
    """
    paths = tuple(Path(p) for p in checkpoints)
    where = Path(source_path) if source_path is not None else None
    if not paths:
        raise ModelError(f"{where or '.'}: an ensemble needs at least one fold checkpoint")
    folds = [load_checkpoint(p, device=device) for p in paths]
    first = folds[0]
    reference = _applied_settings(first.config)
    for path, fold in zip(paths[1:], folds[1:], strict=True):
        difference = _first_difference(reference, _applied_settings(fold.config))
        if difference is not None:
            key, ours, theirs = difference
            raise ModelError(
                f"{path}: {key} is {theirs!r} but {ours!r} in {paths[0]}; the folds of an "
                "ensemble must agree in everything but " + ", ".join(ENSEMBLE_TRAINING_SECTIONS)
            )
    network = FoldEnsemble([f.network for f in folds]).to(device).eval()
    if first.config.infer.backend != "torch":
        tensors = itertools.chain(network.parameters(), network.buffers())
        weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
        if weight_bytes > ONNX_MAX_WEIGHT_BYTES:
            raise ModelError(
                f"{where or paths[0].parent}: the {len(folds)} folds hold {weight_bytes:,} bytes "
                f"of weights, more than one ONNX file takes ({ONNX_MAX_WEIGHT_BYTES:,}) for "
                f"infer.backend {first.config.infer.backend!r}; use infer.backend 'torch'"
            )
    versions = sorted({f.medseg_version for f in folds})
    return LoadedModel(
        network=network,
        config=first.config,
        label_names=first.label_names,
        medseg_version=", ".join(versions),
        extra={"folds": len(folds)},
        source_path=where if where is not None else paths[0].parent,
        folds=paths,
    )


def _applied_settings(config: ExperimentConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude=set(ENSEMBLE_TRAINING_SECTIONS))


def _first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted key where ``a`` and ``b`` differ, with both values; ``None`` if equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{prefix}{index}.")
            if found is not None:
                return found
        return None
    return None if a == b else (prefix.rstrip("."), a, b)


def export_onnx(network: torch.nn.Module, path: Path, window_shape: Sequence[int]) -> Path:
    """Write ``network`` as an ONNX graph for ONNX Runtime / OpenVINO, atomically.

    The graph takes ``image``: ``(batch, 1, slice, row, column)`` float32 with the batch size
    free and the spatial size fixed to ``window_shape``, and returns ``logits``:
    ``(batch, classes, slice, row, column)``. The network is captured in eval mode on the CPU
    with ``torch.export`` (torch's ONNX exporter with ``dynamo=True``; the TorchScript-based
    one is deprecated) and written as one self-contained file, weights included; its own
    device and mode are left as they were.

    Args:
        network: a network from :func:`build_network`.
        path: the ``.onnx`` file to write.
        window_shape: sliding-window size in voxels, array order ``(slice, row, column)``.

    Returns:
        ``path``.

    Raises:
        ModelError: if the weights are over :data:`ONNX_MAX_WEIGHT_BYTES`, or the exporter
            fails (for example on a ``forward`` that branches on tensor values, which
            ``torch.export`` refuses rather than keep one branch).
    """
    import onnx  # only the exported runtimes need it

    path = Path(path)
    tensors = itertools.chain(network.parameters(), network.buffers())
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
    if weight_bytes > ONNX_MAX_WEIGHT_BYTES:
        raise ModelError(
            f"{path}: {weight_bytes:,} bytes of weights do not fit one ONNX file "
            f"(at most {ONNX_MAX_WEIGHT_BYTES:,})"
        )
    was_training = network.training
    device = next(network.parameters()).device
    network.eval().cpu()
    window = tuple(int(s) for s in window_shape)
    example = torch.zeros((_EXPORT_EXAMPLE_BATCH, 1, *window), dtype=torch.float32)
    try:
        with _quiet_onnx_exporter():
            program = torch.onnx.export(
                network,
                (example,),
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                optimize=True,
                verbose=False,
            )
            if program is None:  # only the TorchScript exporter returns None
                raise RuntimeError("torch.onnx.export returned no ONNX program")
            graph = program.model_proto  # weights inline: no external-data file to carry
    except (RuntimeError, ValueError, TypeError, ImportError) as exc:  # ImportError: onnxscript
        raise ModelError(f"{path}: ONNX export failed: {_root_cause(exc)}") from exc
    finally:
        network.to(device).train(was_training)
    with atomic_path(path) as tmp:
        onnx.save_model(graph, str(tmp), format="protobuf")
    return path


#: torch's ONNX exporter logs this on every export: medseg's networks use no torchvision ops.
_TORCHVISION_NOTICE = "torchvision is not installed"


@contextlib.contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Silence what torch's ONNX exporter says on every export that is no news to a user: a
    warning per torchvision operator it skips, and a deprecation inside torch's own pytree
    code. Anything else it logs or warns still shows."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")

    def skip(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_TORCHVISION_NOTICE)

    registration.addFilter(skip)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning
            )
            yield
    finally:
        registration.removeFilter(skip)


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost cause: torch's exporter wraps the error that says what
    is wrong in several paragraphs of advice."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


# ---------------------------------------------------------------------------------------------
# exact rewrites for the exported runtimes


class SubPixelConvTranspose3d(torch.nn.Module):
    """A ``ConvTranspose3d`` computed as a ``Conv3d`` on the input followed by depth-to-space.

    A transposed convolution with stride ``s`` gives each output voxel ``s * m + a`` (per axis)
    from a few input voxels near ``m``; which ones, and with which kernel taps, depends only on
    the phase ``a``. So one convolution with ``out_channels * s0 * s1 * s2`` channels over the
    (zero-padded) input computes every phase of every output voxel, and a reshape interleaves
    the phases. The result is the transposed convolution's, up to float rounding (the same
    products, summed in another order).

    Why: CPU runtimes run transposed convolutions whose output has few channels poorly. With the
    demo U-Net (its last up-sampling gives 2 channels at full resolution), OpenVINO ran a 96^3
    window in 33 ms instead of 42-46 ms (2 cores). Neither MONAI nor the ONNX runtimes offer the
    rewrite, and ONNX's ``DepthToSpace`` is 2-D only, so it is written here; it is applied only
    to the exported copy of a network (:func:`with_subpixel_upsampling`).

    Supported: ``groups == 1``, ``dilation == 1``, zero padding, and per axis
    ``kernel + output_padding == stride + 2 * padding`` (the output is exactly ``stride`` times
    the input): MONAI UNet's up-sampling (kernel 3, stride 2, padding 1, output padding 1) and
    DynUNet's (kernel = stride = 2), also with per-axis strides such as ``(1, 2, 2)`` (an axis
    of stride 1 is a plain convolution along it: UNet's kernel 3, padding 1; DynUNet's kernel
    1). :func:`subpixel_supported` says whether a module is.
    """

    def __init__(self, deconv: torch.nn.ConvTranspose3d) -> None:
        super().__init__()
        if not subpixel_supported(deconv):
            raise ValueError(f"not a sub-pixel transposed convolution: {deconv}")
        weight = deconv.weight.detach()  # (in, out, k0, k1, k2)
        in_channels, out_channels = int(weight.shape[0]), int(weight.shape[1])
        strides = (int(deconv.stride[0]), int(deconv.stride[1]), int(deconv.stride[2]))
        padding = cast(tuple[int, int, int], deconv.padding)  # not a string: checked above
        axes = [
            _phase_taps(int(k), int(s), int(p))
            for k, s, p in zip(deconv.kernel_size, strides, padding, strict=True)
        ]
        tables = [table for table, _ in axes]  # per axis: phase -> tap at each kernel offset
        sizes = (len(tables[0][0]), len(tables[1][0]), len(tables[2][0]))
        kernel = weight.new_zeros((out_channels, *strides, in_channels, *sizes))
        # every phase (a, b, c) and kernel offset (u, v, w) that has a tap on all three axes
        for phases in itertools.product(*(range(s) for s in strides)):
            offsets = [enumerate(table[phase]) for table, phase in zip(tables, phases, strict=True)]
            for (u, tu), (v, tv), (w, tw) in itertools.product(*offsets):
                if tu is not None and tv is not None and tw is not None:
                    kernel[:, phases[0], phases[1], phases[2], :, u, v, w] = weight[
                        :, :, tu, tv, tw
                    ].T
        self.out_channels = out_channels
        self.strides = strides
        # F.pad order: last axis first, (low, high) each
        self.padding = tuple(int(x) for _, pads in reversed(axes) for x in pads)
        self.conv = torch.nn.Conv3d(
            in_channels,
            out_channels * strides[0] * strides[1] * strides[2],
            sizes,
            bias=deconv.bias is not None,
        )
        self.conv.weight.data = kernel.reshape(self.conv.weight.shape)
        if deconv.bias is not None and self.conv.bias is not None:
            self.conv.bias.data = deconv.bias.detach().repeat_interleave(
                strides[0] * strides[1] * strides[2]
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(torch.nn.functional.pad(x, self.padding))
        # (n, out * s0 * s1 * s2, d, h, w) -> (n, out, d, s0, h, s1, w, s2) -> (n, out, D, H, W);
        # unflatten/flatten keep the channel count known to the ONNX exporter
        y = y.unflatten(1, (self.out_channels, *self.strides)).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.flatten(6, 7).flatten(4, 5).flatten(2, 3)


def _phase_taps(
    kernel: int, stride: int, padding: int
) -> tuple[list[list[int | None]], tuple[int, int]]:
    """Along one axis: for each output phase ``a``, the kernel tap applied to input ``m + d``
    for each offset ``d`` of the rewritten kernel (``None``: no tap), and the (low, high) zero
    padding that makes the rewritten convolution's output as long as its input.

    Output ``o = stride * i - padding + t`` takes tap ``t`` from input ``i``; for
    ``o = stride * m + a`` that is input ``m + (a + padding) // stride - j`` with tap
    ``stride * j + (a + padding) % stride``, for every ``j >= 0`` whose tap is in the kernel.
    """
    offsets: list[dict[int, int]] = []
    for a in range(stride):
        base, phase = divmod(a + padding, stride)
        offsets.append(
            {base - j: stride * j + phase for j in range(kernel) if stride * j + phase < kernel}
        )
    every = [d for taps in offsets for d in taps]
    low, high = min(every), max(every)
    table = [[taps.get(d) for d in range(low, high + 1)] for taps in offsets]
    return table, (-low, high)


def subpixel_supported(module: torch.nn.Module) -> bool:
    """Whether :class:`SubPixelConvTranspose3d` can replace ``module`` exactly."""
    if not isinstance(module, torch.nn.ConvTranspose3d):
        return False
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        return False
    return all(
        int(d) == 1 and int(k) + int(op) == int(s) + 2 * int(p)
        for k, s, p, op, d in zip(
            module.kernel_size,
            module.stride,
            module.padding,
            module.output_padding,
            module.dilation,
            strict=True,
        )
    )


def with_subpixel_upsampling(network: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy of ``network`` (eval mode) with every supported ``ConvTranspose3d`` replaced
    by its :class:`SubPixelConvTranspose3d`; ``network`` itself is left as it is."""
    was_training = network.training
    copy_ = copy.deepcopy(network.eval()).cpu()
    network.train(was_training)
    for module in list(copy_.modules()):
        for name, child in list(module.named_children()):
            if subpixel_supported(child):
                setattr(module, name, SubPixelConvTranspose3d(child))  # type: ignore[arg-type]
    return copy_
