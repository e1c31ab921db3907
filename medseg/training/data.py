"""Datasets for training: Decathlon-style datalists of (image, label) pairs.

A datalist is a JSON file ``{"training": [{"image": ..., "label": ...}], "validation": [...]}``
with paths relative to the file, or the ``dataset.json`` of an nnU-Net v2 raw dataset (no file
list: the cases are ``labelsTr/<case><file_ending>`` with ``imagesTr/<case>_0000<file_ending>``,
one input channel). An image is a DICOM series folder or a NIfTI/NRRD file; a
label is a NIfTI/NRRD label map on the image's grid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, InputError
from medseg.io import dicom, nifti
from medseg.volume import Volume, VolumeKind, require_same_geometry

__all__ = [
    "Datalist",
    "LabelledCase",
    "load_datalist",
    "load_image",
    "load_training_cases",
    "nnunet_cases",
]


@dataclass(frozen=True, slots=True)
class LabelledCase:
    """An image and its label map on the same grid.

    Attributes:
        case_id: ``training_000``-style id; never derived from patient attributes.
        image: IMAGE volume (HU for CT), array order ``(slice, row, column)``.
        labels: LABELS volume on the same geometry.
    """

    case_id: str
    image: Volume
    labels: Volume


@dataclass(frozen=True, slots=True)
class Datalist:
    """Training and validation cases."""

    training: tuple[LabelledCase, ...]
    validation: tuple[LabelledCase, ...]


def load_image(path: Path) -> Volume:
    """An IMAGE volume from a DICOM series folder or a NIfTI/NRRD file."""
    path = Path(path)
    return dicom.load_series(path) if path.is_dir() else nifti.load(path, VolumeKind.IMAGE)


def _entries(raw: object, key: str, source: Path) -> list[dict[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(
        isinstance(e, dict) and isinstance(e.get("image"), str) and isinstance(e.get("label"), str)
        for e in raw
    ):
        raise ConfigError(
            f"{source}: {key!r} must be a list of {{'image': ..., 'label': ...}} entries"
        )
    return raw


def _load_cases(
    entries: Sequence[dict[str, str]], root: Path, prefix: str
) -> tuple[LabelledCase, ...]:
    cases = []
    for i, entry in enumerate(entries):
        image = load_image(root / entry["image"])
        labels = nifti.load(root / entry["label"], VolumeKind.LABELS)
        require_same_geometry(image, labels)
        cases.append(LabelledCase(f"{prefix}_{i:03d}", image, labels))
    return tuple(cases)


def _read_entries(path: Path) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The ``training`` entries (checked, non-empty) and the whole JSON object of a datalist."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read datalist ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a datalist must be a JSON object with a 'training' list")
    if "training" not in raw and "file_ending" in raw:
        return _nnunet_entries(path, raw), raw
    training = _entries(raw.get("training"), "training", path)
    if not training:
        raise ConfigError(f"{path}: the 'training' list is empty")
    return training, raw


def nnunet_cases(path: Path, raw: dict[str, Any]) -> list[tuple[str, Path, Path]]:
    """The ``(case id, image, label)`` files of an nnU-Net v2 raw dataset, as nnU-Net finds
    them: the ``dataset`` map of its ``dataset.json`` if it has one, else every
    ``imagesTr/<case>_0000<file_ending>`` with ``labelsTr/<case><file_ending>``, by case id.

    Raises:
        ConfigError: no ``file_ending``, a malformed ``dataset`` map, or a label map in
            ``labelsTr`` without its image.
        InputError: no ``imagesTr`` folder, or a case with channels other than ``0000``.
    """
    root = path.parent
    ending = raw.get("file_ending")
    if not isinstance(ending, str) or not ending:
        raise ConfigError(f"{path}: 'file_ending' (e.g. '.nii.gz') is missing")
    if "dataset" in raw:
        listed = raw["dataset"]
        if not isinstance(listed, dict):
            raise ConfigError(f"{path}: 'dataset' must map case ids to images and label")
        cases = []
        for case_id, entry in listed.items():
            images = entry.get("images") if isinstance(entry, dict) else None
            if not isinstance(images, list) or len(images) != 1 or "label" not in entry:
                raise ConfigError(f"{path}: case {case_id!r} needs one image and a label")
            cases.append((str(case_id), root / images[0], root / entry["label"]))
        return cases
    images_dir = root / "imagesTr"
    if not images_dir.is_dir():
        raise InputError(f"{path}: no imagesTr folder next to it")
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending))
    channels: dict[str, set[str]] = {}
    for file in images_dir.iterdir():
        match = pattern.fullmatch(file.name)
        if match:
            channels.setdefault(match.group(1), set()).add(match.group(2))
    for case_id, found in sorted(channels.items()):
        if found != {"0000"}:
            raise InputError(
                f"{images_dir}: case {case_id!r} has channels {sorted(found)}, expected only 0000"
            )
    orphans = sorted(
        p.name
        for p in (root / "labelsTr").glob(f"*{ending}")
        if p.name[: -len(ending)] not in channels
    )
    if orphans:
        raise ConfigError(
            f"{root / 'labelsTr' / orphans[0]}: missing image imagesTr/"
            f"{orphans[0][: -len(ending)]}_0000{ending} ({len(orphans)} label map(s) without one)"
        )
    return [
        (case_id, images_dir / f"{case_id}_0000{ending}", root / "labelsTr" / f"{case_id}{ending}")
        for case_id in sorted(channels)
    ]


def _nnunet_entries(path: Path, raw: dict[str, Any]) -> list[dict[str, str]]:
    """The cases of an nnU-Net v2 raw dataset (:func:`nnunet_cases`) as datalist entries."""
    channels = raw.get("channel_names", raw.get("modality"))
    if isinstance(channels, dict) and len(channels) != 1:
        raise ConfigError(
            f"{path}: {len(channels)} input channels {sorted(channels.values())}; medseg's "
            "networks take one image per case"
        )
    try:
        cases = nnunet_cases(path, raw)
    except InputError as exc:
        raise ConfigError(str(exc)) from exc
    for _, image, label in cases:
        for file in (image, label):
            if not file.is_file():
                raise ConfigError(f"{file}: missing (listed by {path})")
    return [{"image": str(image), "label": str(label)} for _, image, label in cases]


def load_training_cases(path: Path) -> tuple[LabelledCase, ...]:
    """Every case of a datalist's ``training`` list (ids ``training_000``...), for k-fold.

    Raises:
        ConfigError: malformed JSON or entries, or an empty ``training`` list.
        InputError: an image or label cannot be read, or their grids differ.
    """
    path = Path(path)
    training, _ = _read_entries(path)
    try:
        return _load_cases(training, path.parent, "training")
    except InputError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def load_datalist(path: Path, *, validation_cases: int = 1) -> Datalist:
    """Load every case of a Decathlon-style datalist.

    Args:
        path: the JSON file.
        validation_cases: when the file has no ``validation`` list, the last this-many
            training entries are held out for validation (a deterministic split).

    Raises:
        ConfigError: malformed JSON or entries, or too few cases to hold any out.
        InputError: an image or label cannot be read, or their grids differ.
    """
    path = Path(path)
    training, raw = _read_entries(path)
    validation = _entries(raw.get("validation"), "validation", path)
    if not validation:
        if len(training) <= validation_cases:
            raise ConfigError(
                f"{path}: {len(training)} training cases, need more than {validation_cases} to "
                "hold out a validation set (or give a 'validation' list)"
            )
        training, validation = training[:-validation_cases], training[-validation_cases:]
    root = path.parent
    try:
        return Datalist(
            _load_cases(training, root, "training"), _load_cases(validation, root, "validation")
        )
    except InputError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
