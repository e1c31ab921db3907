"""The DATA of ``medseg plan DATA``: the labelled training cases a fingerprint is computed from.

:func:`fingerprint_dataset` takes

- a **dataset.json** in nnU-Net v2's raw layout (``channel_names`` with one channel,
  ``labels`` ``{"background": 0, "GTV": 1}``, ``file_ending``; cases are
  ``imagesTr/<case>_0000<file_ending>`` + ``labelsTr/<case><file_ending>``, or the optional
  ``dataset`` map). Cases are named by their nnU-Net identifiers, in nnU-Net's sorted order.
- a **medseg datalist** (Decathlon style, ``{"training": [{"image": ..., "label": ...}]}``,
  paths relative to the file): its ``training`` list only (``validation`` is held out), cases
  named ``training_000``, ... as :func:`medseg.training.data.load_training_cases` names them.
  Label names come from the ``labels`` argument, else the file's Decathlon ``labels``
  (``{"0": "background", "1": "liver"}``). The modality comes from the ``modality`` argument,
  else the file's Decathlon ``modality`` (``{"0": "CT"}``), else the images' DICOM headers
  (NIfTI and NRRD carry none: then one of the first two is required).
- an **experiment config** (an :class:`~medseg.config.ExperimentConfig` or its YAML file):
  ``data.dicom_root`` + ``data.labels`` (patients with CT/MR + RT-STRUCT, converted and cached
  by :func:`medseg.training.crossval.load_cases`, as training converts them: ids ``case_000``,
  ..., unusable patients skipped with a warning naming the case id), or ``data.datalist``;
  label names from ``model.labels``.

Every case is checked as it is read (image and labels on one grid, every label value
declared); errors are one line naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from medseg.config import ExperimentConfig, load_config
from medseg.errors import ConfigError, InputError, MedsegError
from medseg.io import nifti
from medseg.planning.fingerprint import Fingerprint, compute_fingerprint
from medseg.training import crossval, data
from medseg.volume import Volume, VolumeKind

__all__ = ["fingerprint_dataset"]

Case = tuple[str, Volume, Volume]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read dataset JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def _one_channel(channels: object, key: str, path: Path) -> str:
    if not isinstance(channels, dict) or not channels:
        raise ConfigError(f"{path}: {key!r} must map channel '0' to a modality, got {channels!r}")
    if len(channels) != 1 or not isinstance(channels.get("0"), str):
        raise ConfigError(
            f"{path}: one input channel is supported ({key} '0': modality), got {channels!r}"
        )
    return str(channels["0"])


def _nnunet_labels(raw: object, path: Path) -> dict[int, str]:
    if not isinstance(raw, dict) or raw.get("background") != 0:
        raise ConfigError(f"{path}: 'labels' must map 'background' to 0 and names to values")
    labels: dict[int, str] = {}
    for name, value in raw.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(
                f"{path}: label {name!r} must be one integer value, got {value!r} "
                "(region-based labels are not supported)"
            )
        if value in labels or (value == 0 and name != "background"):
            raise ConfigError(f"{path}: label value {value} is given twice")
        if value > 0:
            labels[value] = str(name)
    return labels


def _decathlon_labels(raw: object, path: Path) -> dict[int, str]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) and k.isdigit() for k in raw):
        raise ConfigError(f"{path}: 'labels' must map values to names, e.g. {{'1': 'GTV'}}")
    return {int(k): str(v) for k, v in raw.items() if int(k) > 0}


def _training_entries(raw: object, path: Path) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not all(
        isinstance(e, dict) and isinstance(e.get("image"), str) and isinstance(e.get("label"), str)
        for e in raw
    ):
        raise ConfigError(f"{path}: 'training' must be a list of {{'image': ..., 'label': ...}}")
    return raw


def _pair(case_id: str, image_path: Path, label_path: Path) -> Case:
    image = data.load_image(image_path)
    labels = nifti.load(label_path, VolumeKind.LABELS)
    return case_id, image, labels


def _check_files(cases: list[tuple[str, Path, Path]], path: Path) -> None:
    if not cases:
        raise InputError(f"{path}: the dataset has no training cases")
    for _, image, label in cases:
        for file in (image, label):
            if not file.exists():
                raise InputError(f"{path}: {file} does not exist")


def _loaded(cases: list[tuple[str, Path, Path]], path: Path) -> Iterator[Case]:
    for case_id, image, label in cases:
        try:
            yield _pair(case_id, image, label)
        except MedsegError as exc:
            raise type(exc)(f"{path}: {exc}") from exc


def _modality_of(
    cases: Iterator[Case], given: str | None, where: Path
) -> tuple[list[str], Iterator[Case]]:
    """Pass cases through, collecting the modality each image's header names."""
    seen: list[str] = []

    def run() -> Iterator[Case]:
        for case in cases:
            found = case[1].source.modality
            if found:
                seen.append(found)
                if len(set(seen)) > 1:
                    raise InputError(f"{where}: mixed modalities {sorted(set(seen))}")
                if given is not None and found != given:
                    raise InputError(
                        f"{where}: case {case[0]} is {found}, but the modality is given as {given}"
                    )
            yield case

    return seen, run()


def _fingerprint(
    cases: Iterator[Case],
    modality: str | None,
    labels: Mapping[int, str],
    where: Path,
    seed: int,
    samples_per_case: int,
) -> Fingerprint:
    seen, checked = _modality_of(cases, modality, where)
    fingerprint = compute_fingerprint(
        checked,
        modality=modality or "pending",
        labels=labels,
        seed=seed,
        samples_per_case=samples_per_case,
    )
    final = modality or (seen[0] if seen else None)
    if final is None:
        raise ConfigError(
            f"{where}: the images do not say their modality (NIfTI/NRRD); give it "
            "(a 'modality' {'0': 'CT'} in the datalist, or the modality argument)"
        )
    if seen and len(seen) != len(fingerprint.cases):
        raise InputError(f"{where}: some images say their modality ({seen[0]}), others do not")
    return replace(fingerprint, modality=final)


def _from_json(
    path: Path,
    modality: str | None,
    labels: Mapping[int, str] | None,
    seed: int,
    samples_per_case: int,
) -> Fingerprint:
    raw = _read_json(path)
    if "training" in raw:  # a medseg / Decathlon datalist
        entries = _training_entries(raw["training"], path)
        if labels is None:
            if "labels" not in raw:
                raise ConfigError(
                    f"{path}: no label names: add 'labels' {{'1': 'GTV'}} or pass labels"
                )
            labels = _decathlon_labels(raw["labels"], path)
        if modality is None and "modality" in raw:
            modality = _one_channel(raw["modality"], "modality", path)
        listed = [
            (f"training_{i:03d}", path.parent / e["image"], path.parent / e["label"])
            for i, e in enumerate(entries)
        ]
    elif "channel_names" in raw or "file_ending" in raw:  # nnU-Net v2's raw layout
        given = _one_channel(raw.get("channel_names"), "channel_names", path)
        if modality is not None and modality != given:
            raise ConfigError(
                f"{path}: channel_names says {given}, the modality given is {modality}"
            )
        modality = given
        if labels is None:
            labels = _nnunet_labels(raw.get("labels"), path)
        listed = data.nnunet_cases(path, raw)
    else:
        raise ConfigError(
            f"{path}: neither a datalist ('training' list) nor an nnU-Net dataset.json "
            "('channel_names', 'labels', 'file_ending')"
        )
    _check_files(listed, path)
    return _fingerprint(_loaded(listed, path), modality, labels, path, seed, samples_per_case)


def _from_config(
    config: ExperimentConfig,
    where: Path,
    modality: str | None,
    seed: int,
    samples_per_case: int,
) -> Fingerprint:
    labels = config.model.label_names
    if config.data.dicom_root is not None:
        cases = crossval.load_cases(config)  # converts (and caches) as training does
        pairs = iter([(case_id, c.image, c.labels) for case_id, c in cases.items()])
        return _fingerprint(
            pairs, modality, labels, Path(config.data.dicom_root), seed, samples_per_case
        )
    if config.data.datalist is not None:
        return _from_json(Path(config.data.datalist), modality, labels, seed, samples_per_case)
    raise ConfigError(f"{where}: set data.datalist or data.dicom_root (with data.labels)")


def fingerprint_dataset(
    source: Path | ExperimentConfig,
    *,
    modality: str | None = None,
    labels: Mapping[int, str] | None = None,
    seed: int = 1234,
    samples_per_case: int = 10000,
) -> Fingerprint:
    """The :class:`~medseg.planning.fingerprint.Fingerprint` of a dataset (see the module
    docstring for what ``source`` may be).

    Args:
        source: a dataset.json (nnU-Net raw layout or medseg datalist), a folder holding one
            (nnU-Net's ``DatasetNNN_Name``), an experiment config YAML file, or a loaded
            :class:`~medseg.config.ExperimentConfig`.
        modality: the images' modality (``"CT"``, ``"MR"``) where the data does not say it;
            where it does, both must agree.
        labels: label value -> name, for a datalist without Decathlon ``labels`` (a config's
            ``model.labels`` and an nnU-Net dataset.json's ``labels`` are used otherwise).
        seed: seed of the foreground sample.
        samples_per_case: foreground voxels drawn per case.

    Raises:
        ConfigError: a malformed dataset.json, datalist or config; no modality or label names.
        InputError: a missing or unreadable file, an empty dataset, an image and label map on
            different grids (GeometryError), a label value not in the labels, mixed
            modalities.
    """
    if isinstance(source, ExperimentConfig):
        return _from_config(source, Path("<config>"), modality, seed, samples_per_case)
    path = Path(source)
    if path.is_dir():  # an nnU-Net raw dataset folder: its dataset.json
        path = path / "dataset.json"
    if path.suffix.lower() in (".yaml", ".yml"):
        return _from_config(load_config(path), path, modality, seed, samples_per_case)
    return _from_json(path, modality, labels, seed, samples_per_case)
