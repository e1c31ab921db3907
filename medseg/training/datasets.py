"""A folder-of-patients DICOM + RT-STRUCT training source, with a converted-array cache.

Layout: ``root/<patient>/`` holds one CT/MR series and an RT Structure Set drawn on it (any
nesting, any file names). A label map chooses ROIs by name, case-insensitively, with shell
glob patterns, e.g. ``{1: ["GTV", "GTVp", "GTV*"], 2: ["Spinal Cord", "SpinalCord"]}``: label
``v`` is the union of every ROI matching one of its patterns (a higher value wins where
labels overlap), as :func:`medseg.io.rtstruct.read_label_map` combines them. A patient
without an RT-STRUCT, or without a ROI for some label, is reported in
:attr:`DicomDataset.skipped` and left out; it does not stop the others.

Converted cases are cached as ``<cache_dir>/<key>.npz`` (HU image, labels, geometry) where
``key`` is a SHA-256 of the bytes of every file under the patient folder, the label map and a
caller-supplied preprocessing description, so a second use reads one array file instead of
the DICOM series, and a changed file or config converts again.

Case ids are ``case_000``, ``case_001``, ... in sorted folder order: never patient attributes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError, MedsegError
from medseg.geometry import Geometry
from medseg.io import dicom, rtstruct
from medseg.io.files import atomic_path
from medseg.training.data import LabelledCase
from medseg.volume import SourceInfo, Volume, VolumeKind

__all__ = [
    "DicomDataset",
    "SkippedCase",
    "cache_key",
    "load_dicom_rtstruct_folder",
]

#: Bumped when the cached array layout changes (old cache files are then ignored).
_CACHE_VERSION = 1


@dataclass(frozen=True, slots=True)
class SkippedCase:
    """A patient folder left out, and why (folder path and ROI names only; the folder's name
    may be a patient's, so logs name the case by ``case_id``, which it would have had)."""

    folder: Path
    reason: str
    case_id: str = ""


@dataclass(frozen=True, slots=True)
class DicomDataset:
    """Cases converted from a folder of patients.

    Attributes:
        cases: the usable cases, HU images and label maps on the same grid.
        skipped: patients left out, with the reason.
        folders: case id -> patient folder.
    """

    cases: tuple[LabelledCase, ...]
    skipped: tuple[SkippedCase, ...]
    folders: Mapping[str, Path]


def __getattr__(name: str) -> Any:
    """``match_rois`` moved to :mod:`medseg.io.rtstruct` (until 0.2)."""
    if name == "match_rois":
        from medseg._compat import moved_name

        return moved_name(__name__, name, "medseg.io.rtstruct")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cache_key(folder: Path, labels: Mapping[int, Sequence[str]], preprocess: Any) -> str:
    """SHA-256 (hex) of the files under ``folder`` (relative paths and bytes), the label map
    and ``preprocess`` (anything JSON-serialisable, e.g. ``config.preprocess.model_dump()``)."""
    digest = hashlib.sha256()
    digest.update(f"medseg-dicom-cache-{_CACHE_VERSION}".encode())
    digest.update(
        json.dumps(
            {
                "labels": {str(k): list(v) for k, v in sorted(labels.items())},
                "preprocess": preprocess,
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_dicom_rtstruct_folder(
    root: Path,
    labels: Mapping[int, Sequence[str]],
    *,
    cache_dir: Path | None = None,
    preprocess: Any = None,
) -> DicomDataset:
    """Convert every patient folder under ``root`` into an (image, labels) case.

    Args:
        root: folder with one sub-folder per patient.
        labels: label value (1..N) -> ROI name patterns (case-insensitive globs); every label
            is required.
        cache_dir: where converted cases are cached (``None``: no cache).
        preprocess: JSON-serialisable description of the preprocessing the arrays are used
            with; part of the cache key.

    Returns:
        The converted cases (image: HU, labels: uint8 ``0..N``, array order
        ``(slice, row, column)``) and the skipped patients.

    Raises:
        InputError: if ``root`` has no patient folders.
    """
    folders = sorted(p for p in Path(root).iterdir() if p.is_dir())
    if not folders:
        raise InputError(f"{root}: no patient folders")
    cases: list[LabelledCase] = []
    skipped: list[SkippedCase] = []
    by_id: dict[str, Path] = {}
    for index, folder in enumerate(folders):
        case_id = f"case_{index:03d}"
        cached = None
        key = ""
        if cache_dir is not None:
            key = cache_key(folder, labels, preprocess)
            cached = _read_cache(Path(cache_dir) / f"{key}.npz", case_id)
        if cached is None:
            try:
                image, label_map = _convert(folder, labels)
            except MedsegError as exc:
                skipped.append(SkippedCase(folder, str(exc), case_id))
                continue
            if cache_dir is not None:
                _write_cache(Path(cache_dir) / f"{key}.npz", image, label_map)
            cached = LabelledCase(case_id, image, label_map)
        cases.append(cached)
        by_id[case_id] = folder
    return DicomDataset(tuple(cases), tuple(skipped), by_id)


def _convert(folder: Path, labels: Mapping[int, Sequence[str]]) -> tuple[Volume, Volume]:
    inventory = dicom.scan_folder(folder)
    files = sorted(f for s in inventory.series if s.modality == "RTSTRUCT" for f in s.files)
    if not files:
        raise InputError(f"{folder}: no RT-STRUCT found")
    image = dicom.load_series(folder)
    return image, rtstruct.read_label_map(files, image, labels, where=folder)


def _write_cache(path: Path, image: Volume, labels: Volume) -> None:
    g = image.geometry
    with atomic_path(path) as tmp, tmp.open("wb") as stream:
        np.savez(
            stream,
            image=np.asarray(image.array),
            labels=np.asarray(labels.array),
            spacing_mm=np.asarray(g.spacing_mm, dtype=np.float64),
            origin_mm=np.asarray(g.origin_mm, dtype=np.float64),
            direction=np.asarray(g.direction, dtype=np.float64),
            uids=np.asarray(
                [
                    image.source.series_instance_uid or "",
                    image.source.frame_of_reference_uid or "",
                    image.source.modality or "",
                ]
            ),
        )


def _read_cache(path: Path, case_id: str) -> LabelledCase | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        image, label_array = stored["image"], stored["labels"]
        series, frame, modality = (str(u) or None for u in stored["uids"])
        geometry = Geometry(
            tuple(int(s) for s in image.shape),  # type: ignore[arg-type]
            tuple(float(s) for s in stored["spacing_mm"]),  # type: ignore[arg-type]
            tuple(float(s) for s in stored["origin_mm"]),  # type: ignore[arg-type]
            tuple(float(s) for s in stored["direction"]),
        )
    source = SourceInfo(
        path=path, series_instance_uid=series, frame_of_reference_uid=frame, modality=modality
    )
    return LabelledCase(
        case_id,
        Volume(image, geometry, VolumeKind.IMAGE, source),
        Volume(label_array, geometry, VolumeKind.LABELS, source),
    )
