"""Verified reduced precision: a faster arithmetic is used only where it was shown to give the
float32 labels.

A network run in bfloat16 or float16 is faster where the hardware computes in it natively,
and its labels differ from float32's at a few boundary voxels. Which precision a model may
use is therefore not a silent default but a measured fact about that model:
:func:`medseg.infer.verify_precision` (run after training and by ``medseg verify-precision``)
segments validation cases in float32 and in each faster precision the machine supports
natively, and records per precision the worst label Dice against float32 and the worst
relative volume change of any structure over the cases (:class:`Verification`, kept in the
checkpoint's ``extra`` as JSON under :data:`EXTRA_KEY`, so the MLflow model holds it too).

``infer.precision: auto`` (:func:`choose`) then takes the fastest precision that this
machine computes natively for the configured backend and whose record, made with the same
backend and device type and the same window settings (:data:`SETTINGS`: how windows are
placed and blended decides which boundary voxels a faster precision flips), shows label
Dice >= :data:`MIN_DICE` and volume change <= :data:`MAX_VOLUME_CHANGE` on every case;
anything else (no record, a failed record, an
ensemble, a precision this machine would only emulate) runs in float32. The precision used
and why are in the RT-STRUCT and SEG provenance, ``volumes.json`` and the QA page.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

import medseg
from medseg.config import InferConfig
from medseg.errors import ModelError
from medseg.model import LoadedModel

__all__ = [
    "EXTRA_KEY",
    "MAX_VOLUME_CHANGE",
    "MIN_DICE",
    "SETTINGS",
    "PrecisionRecord",
    "Verification",
    "choose",
    "compare_labels",
    "inference_settings",
    "native_precisions",
    "read_verification",
    "with_precision",
]

#: The arithmetic every other precision is compared with.
REFERENCE = "float32"
#: ``auto`` accepts a precision only if every case's label Dice (each structure, against
#: float32) is at least this ...
MIN_DICE = 0.999
#: ... and no structure's volume changed by more than this fraction on any case.
MAX_VOLUME_CHANGE = 0.005
#: Key of the verification (JSON text) in a checkpoint's ``extra``.
EXTRA_KEY = "precision_verification"
#: Faster precisions per device type, fastest first. On CUDA float16 and bfloat16 run at the
#: same tensor-core rate; float16 keeps 3 more mantissa bits, so it is tried first.
FASTER: Mapping[str, tuple[str, ...]] = {"cuda": ("float16", "bfloat16"), "cpu": ("bfloat16",)}
#: The ``infer`` settings a record holds for. Measured on the 200 x 512 x 512 benchmark CT
#: with one model: bfloat16's labels agreed with float32's at Dice 0.9987 with 96^3
#: windows at overlap 0.25 constant, and at 0.9938 at overlap 0.5 Gaussian.
SETTINGS = ("roi_size", "overlap", "blend", "flip_tta")
#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic: AVX512-BF16 and AMX.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True, slots=True)
class PrecisionRecord:
    """How one precision's labels compared with float32's over the verification cases.

    Attributes:
        precision: ``"bfloat16"`` or ``"float16"``.
        backend: the ``infer.backend`` it ran on (``torch``, ``openvino``).
        device: ``"cpu"`` or ``"cuda"``.
        cases: number of cases compared.
        worst_dice: the lowest Dice of any structure on any case against float32's labels
            (a structure empty in both counts as 1).
        worst_volume_change: the largest ``|V - V_float32| / V_float32`` of any structure on
            any case (1.0 where float32 found nothing and this precision found something).
        structures: per structure name, its own ``(worst_dice, worst_volume_change)``.
        settings: the window settings it was measured with (:func:`inference_settings`);
            empty in a record that does not say, which holds for no settings.
    """

    precision: str
    backend: str
    device: str
    cases: int
    worst_dice: float
    worst_volume_change: float
    structures: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        """Whether ``auto`` may use this precision (both thresholds met on every case)."""
        return (
            self.cases > 0
            and self.worst_dice >= MIN_DICE
            and self.worst_volume_change <= MAX_VOLUME_CHANGE
        )


@dataclass(frozen=True, slots=True)
class Verification:
    """Every precision verified for one model, and on what.

    Attributes:
        records: one per precision compared (none where the machine had no faster native
            precision).
        cases: number of cases compared.
        medseg_version: the medseg that measured it.
        native: the faster precisions the verifying machine supported natively.
    """

    records: tuple[PrecisionRecord, ...]
    cases: int
    medseg_version: str = medseg.__version__
    native: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The verification as the JSON text kept in a checkpoint's ``extra``."""
        return json.dumps(
            {
                "reference": REFERENCE,
                "min_dice": MIN_DICE,
                "max_volume_change": MAX_VOLUME_CHANGE,
                "cases": self.cases,
                "medseg_version": self.medseg_version,
                "native": list(self.native),
                "records": [
                    {
                        **{k: v for k, v in dataclasses.asdict(r).items() if k != "structures"},
                        "accepted": r.accepted,
                        "structures": {
                            name: {"worst_dice": d, "worst_volume_change": c}
                            for name, (d, c) in r.structures.items()
                        },
                    }
                    for r in self.records
                ],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Verification:
        """Read :meth:`to_json`'s text back.

        Raises:
            ValueError: if it is not such a verification.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("reference") != REFERENCE:
            raise ValueError("not a medseg precision verification")
        records = tuple(
            PrecisionRecord(
                precision=str(r["precision"]),
                backend=str(r["backend"]),
                device=str(r["device"]),
                cases=int(r["cases"]),
                worst_dice=float(r["worst_dice"]),
                worst_volume_change=float(r["worst_volume_change"]),
                structures={
                    str(name): (float(s["worst_dice"]), float(s["worst_volume_change"]))
                    for name, s in r.get("structures", {}).items()
                },
                settings=dict(r.get("settings", {})),
            )
            for r in data["records"]
        )
        return cls(
            records=records,
            cases=int(data["cases"]),
            medseg_version=str(data.get("medseg_version", "unknown")),
            native=tuple(str(p) for p in data.get("native", ())),
        )

    def merged(self, older: Verification | None) -> Verification:
        """This verification with the records of ``older`` it does not replace: a record
        is replaced only by one of the same precision, backend, device and settings, so
        verifying a second backend or other settings keeps the first one's records."""
        if older is None:
            return self
        kept = tuple(
            r
            for r in older.records
            if self.record(r.precision, r.backend, r.device, r.settings) is None
        )
        return dataclasses.replace(self, records=kept + self.records)

    def record(
        self,
        precision: str,
        backend: str,
        device: str,
        settings: Mapping[str, Any] | None = None,
    ) -> PrecisionRecord | None:
        """The record of ``precision`` made on ``backend`` and ``device`` (with exactly
        ``settings``, if given), if any."""
        for r in self.records:
            if (r.precision, r.backend, r.device) == (precision, backend, device) and (
                settings is None or dict(r.settings) == dict(settings)
            ):
                return r
        return None


def inference_settings(infer: InferConfig) -> dict[str, Any]:
    """``infer``'s :data:`SETTINGS` as JSON values (tuples as lists), as records keep them."""
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key in SETTINGS
        for value in (getattr(infer, key),)
    }


@functools.cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (the first ``flags`` line of ``/proc/cpuinfo``; empty where
    there is none, as on macOS)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def native_precisions(device: str, backend: str = "torch") -> tuple[str, ...]:
    """The faster precisions (fastest first) that ``device`` computes natively for
    ``backend``: on CUDA (torch) float16 from compute capability 7.0 (tensor cores) and
    bfloat16 where the GPU has it without emulation; on a CPU (torch, OpenVINO) bfloat16 with
    AVX512-BF16 or AMX; none for ONNX Runtime, which computes in float32 only.

    A precision the hardware only emulates is never listed: it is slower than float32.
    """
    if backend == "onnxruntime":
        return ()
    if device == "cuda":
        if backend != "torch" or not torch.cuda.is_available():
            return ()
        found = []
        if torch.cuda.get_device_capability() >= (7, 0):
            found.append("float16")
        if torch.cuda.is_bf16_supported(including_emulation=False):
            found.append("bfloat16")
        return tuple(p for p in FASTER["cuda"] if p in found)
    return ("bfloat16",) if cpu_flags() & CPU_BF16_FLAGS else ()


def read_verification(model: LoadedModel) -> Verification | None:
    """The verification kept in ``model``'s checkpoint, or ``None`` if it has none.

    Raises:
        ModelError: if the checkpoint holds one that cannot be read.
    """
    text = model.extra.get(EXTRA_KEY)
    if text is None:
        return None
    try:
        return Verification.from_json(str(text))
    except (ValueError, KeyError, TypeError) as exc:
        where = model.source_path or "the model"
        raise ModelError(f"{where}: unreadable {EXTRA_KEY} in the checkpoint: {exc}") from exc


def model_device(model: LoadedModel) -> str:
    """Where ``model``'s network computes for ``infer.backend``: ``"cuda"`` or ``"cpu"``."""
    if model.config.infer.backend != "torch":
        return "cpu"  # the ONNX runtimes run on the CPU
    parameter = next(model.network.parameters(), None)
    return "cpu" if parameter is None else parameter.device.type


def choose(model: LoadedModel) -> tuple[str, str]:
    """The precision ``model`` runs in, and why (one phrase for logs and provenance).

    A configured precision other than ``auto`` is used as configured. ``auto`` takes the
    first of :func:`native_precisions` whose record (same backend, same device type, same
    :data:`SETTINGS`) is :attr:`PrecisionRecord.accepted`, else float32.
    """
    configured = model.config.infer.precision
    if configured != "auto":
        return configured, "configured"
    backend, device = model.config.infer.backend, model_device(model)
    native = native_precisions(device, backend)
    if not native:
        return REFERENCE, f"auto: no faster precision native to this {device} for {backend}"
    if model.folds:
        return REFERENCE, "auto: an ensemble's folds are not verified together"
    verification = read_verification(model)
    if verification is None:
        return REFERENCE, "auto: not verified (medseg verify-precision)"
    settings = inference_settings(model.config.infer)
    elsewhere = False
    for precision in native:
        record = verification.record(precision, backend, device, settings)
        if record is not None and record.accepted:
            return precision, (
                f"auto: verified on {record.cases} cases, worst Dice {record.worst_dice:.4f}, "
                f"worst volume change {100 * record.worst_volume_change:.2f} %"
            )
        elsewhere |= record is None and verification.record(precision, backend, device) is not None
    if elsewhere:
        return REFERENCE, (
            "auto: verified with other window settings (roi_size, overlap, blend, flip_tta); "
            "medseg verify-precision"
        )
    return REFERENCE, "auto: no faster precision passed verification"


def with_precision(model: LoadedModel, precision: str) -> LoadedModel:
    """``model`` with ``infer.precision`` set to ``precision`` (weights shared)."""
    return model.with_infer(precision=precision)


def compare_labels(
    reference: NDArray[Any], other: NDArray[Any], label_names: Mapping[int, str]
) -> dict[str, tuple[float, float]]:
    """Per structure: Dice of ``other``'s labels against ``reference``'s, and the relative
    volume change ``|V - V_ref| / V_ref`` (0 where both are empty, 1 where only ``other``
    has the structure)."""
    if reference.shape != other.shape:
        raise ValueError(f"label maps differ in shape: {reference.shape} vs {other.shape}")
    out = {}
    for value, name in label_names.items():
        a, b = reference == value, other == value
        n_a, n_b = int(np.count_nonzero(a)), int(np.count_nonzero(b))
        both = int(np.count_nonzero(a & b))
        dice = 1.0 if n_a + n_b == 0 else 2.0 * both / (n_a + n_b)
        change = abs(n_b - n_a) / n_a if n_a else (0.0 if n_b == 0 else 1.0)
        out[name] = (dice, change)
    return out


def summarise(
    precision: str,
    backend: str,
    device: str,
    per_case: Sequence[Mapping[str, tuple[float, float]]],
    settings: Mapping[str, Any] | None = None,
) -> PrecisionRecord:
    """One precision's record from :func:`compare_labels` of every case, measured with
    ``settings`` (:func:`inference_settings`)."""
    structures: dict[str, tuple[float, float]] = {}
    for case in per_case:
        for name, (dice, change) in case.items():
            worst = structures.get(name, (1.0, 0.0))
            structures[name] = (min(worst[0], dice), max(worst[1], change))
    return PrecisionRecord(
        precision=precision,
        backend=backend,
        device=device,
        cases=len(per_case),
        worst_dice=min((d for d, _ in structures.values()), default=1.0),
        worst_volume_change=max((c for _, c in structures.values()), default=0.0),
        structures=structures,
        settings=dict(settings or {}),
    )
