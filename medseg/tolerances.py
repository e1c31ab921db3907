"""Per-structure surface-Dice tolerances (mm): a user's table, medseg's H&N default, a fallback.

The surface Dice (NSD) of a structure is only comparable with a paper's when the tolerance is
the same, and a good tolerance is the structure's inter-observer variation (Nikolov et al.
2021; Maier-Hein et al. 2024, *Metrics Reloaded*): a lens is contoured within about a pixel,
a parotid within several millimetres. :func:`resolve_tolerances` decides one tolerance per
structure, in this order, and says where each came from:

1. the user's table (``medseg evaluate --tolerances FILE``: YAML mapping or two-column CSV,
   structure name -> mm), matched by name, then by TG-263 name;
2. :data:`HN_OAR_TOLERANCES_MM`, matched by TG-263 name (``Parotid-Lt``, ``Parotid_L`` and
   ``parotid left`` are all ``Parotid_L``, see :func:`medseg.nomenclature.propose_standard_name`);
3. the single ``--tolerance-mm`` value.

:data:`HN_OAR_TOLERANCES_MM` is derived, not copied: :func:`derive_tolerances` computes, for
each of the 21 organs of the public DeepMind H&N validation scans (``hn-oar-labels``, a
radiographer and an arbitrating oncologist on each of 7 scans; Nikolov et al., "Clinically
applicable segmentation of head and neck anatomy for radiotherapy", J Med Internet Res 2021,
23(7):e26151; CC BY 4.0), the two experts' HD95 on every scan, and takes per organ (left and
right pooled) the median over the scans: the distance within which 95 % of both experts'
surfaces lie on the median scan. Nikolov et al. set their organ-specific tolerances from the
inter-observer variation of the organ in the same way, on their own scans and annotators, so
their numbers differ; ``scripts/derive_tolerances.py`` prints this table and
``tests/test_tolerances.py`` recomputes it from the data.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from medseg.errors import ConfigError, InputError
from medseg.nomenclature import propose_standard_name

__all__ = [
    "HN_OAR_SOURCE",
    "HN_OAR_TOLERANCES_MM",
    "Tolerance",
    "derive_tolerances",
    "load_tolerances",
    "resolve_tolerances",
    "tolerances_from_hd95",
]

#: Where :data:`HN_OAR_TOLERANCES_MM` comes from, as written beside each tolerance it supplies.
HN_OAR_SOURCE = (
    "medseg H&N default: median inter-observer HD95 on hn-oar-labels (Nikolov et al. 2021)"
)

#: Surface-Dice tolerance (mm) per TG-263 organ name; see the module docstring for the source.
HN_OAR_TOLERANCES_MM: Mapping[str, float] = {
    "Bone_Mandible": 0.98,
    "Brain": 1.25,
    "Brainstem": 3.09,
    "Cochlea_L": 1.12,
    "Cochlea_R": 1.12,
    "Glnd_Lacrimal_L": 2.59,
    "Glnd_Lacrimal_R": 2.59,
    "Glnd_Submand_L": 2.83,
    "Glnd_Submand_R": 2.83,
    "Lens_L": 0.98,
    "Lens_R": 0.98,
    "Lung_L": 0.98,
    "Lung_R": 0.98,
    "OpticNrv_L": 2.59,
    "OpticNrv_R": 2.59,
    "Orbit_L": 2.34,
    "Orbit_R": 2.34,
    "Parotid_L": 5.27,
    "Parotid_R": 5.27,
    "SpinalCanal": 1.38,
    "SpinalCord": 1.95,
}


@dataclass(frozen=True, slots=True)
class Tolerance:
    """The tolerance of one structure and where it came from.

    Attributes:
        mm: the tolerance, mm.
        source: ``"file <path>"``, :data:`HN_OAR_SOURCE` or ``"--tolerance-mm"``.
    """

    mm: float
    source: str


def _checked_mm(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: the tolerance must be a number of mm, got {value!r}")
    try:
        mm = float(value)
    except ValueError:
        raise ConfigError(f"{where}: the tolerance must be a number of mm, got {value!r}") from None
    if not (math.isfinite(mm) and mm >= 0):
        raise ConfigError(f"{where}: the tolerance must be finite and >= 0 mm, got {value!r}")
    return mm


def load_tolerances(path: Path) -> dict[str, float]:
    """A user's tolerance table: structure name -> mm.

    ``.yaml``/``.yml``: a mapping ``Parotid-Lt: 2.85``; ``.csv``: two columns, structure and
    mm, an optional header row (``structure,tolerance_mm``).

    Raises:
        InputError: the file is missing or unreadable.
        ConfigError: it is not such a table, or a value is not a finite non-negative number
            (the message names the file and the structure).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the tolerance table ({exc})") from exc
    table: dict[str, float] = {}
    if path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        for index, row in enumerate(rows):
            if len(row) != 2:
                raise ConfigError(f"{path}: row {index + 1} has {len(row)} columns, expected 2")
            name, value = row[0].strip(), row[1].strip()
            if index == 0:
                try:
                    float(value)
                except ValueError:
                    continue  # a header row
            table[name] = _checked_mm(value, f"{path}: {name}")
    elif path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of structure name to mm")
        for name, value in data.items():
            table[str(name)] = _checked_mm(value, f"{path}: {name}")
    else:
        raise ConfigError(f"{path}: a tolerance table must be .yaml, .yml or .csv")
    if not table:
        raise ConfigError(f"{path}: the tolerance table is empty")
    return table


def _standard(name: str) -> str:
    return propose_standard_name(name) or name


def resolve_tolerances(
    names: Iterable[str],
    default_mm: float,
    table: Mapping[str, float] | None = None,
    *,
    table_source: str = "",
    builtin: bool = True,
) -> dict[str, Tolerance]:
    """One tolerance per structure name, by the order in the module docstring.

    Args:
        names: the structures evaluated.
        default_mm: the tolerance of a structure neither table has.
        table: the user's table (:func:`load_tolerances`), or None.
        table_source: how the user's table is named in :attr:`Tolerance.source`.
        builtin: use :data:`HN_OAR_TOLERANCES_MM` for H&N organs.
    """
    default_mm = _checked_mm(default_mm, "--tolerance-mm")
    user = dict(table or {})
    user_standard = {_standard(k): v for k, v in user.items()}
    resolved = {}
    for name in names:
        standard = _standard(name)
        if name in user:
            resolved[name] = Tolerance(user[name], table_source)
        elif standard in user_standard:
            resolved[name] = Tolerance(user_standard[standard], table_source)
        elif builtin and standard in HN_OAR_TOLERANCES_MM:
            resolved[name] = Tolerance(HN_OAR_TOLERANCES_MM[standard], HN_OAR_SOURCE)
        else:
            resolved[name] = Tolerance(default_mm, "--tolerance-mm")
    return resolved


def _organ(standard_name: str) -> str:
    """``Parotid_L`` -> ``Parotid``: left and right of an organ share a tolerance."""
    for suffix in ("_L", "_R"):
        if standard_name.endswith(suffix):
            return standard_name[: -len(suffix)]
    return standard_name


def derive_tolerances(root: Path) -> tuple[dict[str, float], dict[str, int]]:
    """The default H&N table from two experts' label maps (see the module docstring).

    Args:
        root: ``hn-oar-labels``: ``oncologist/<scan>/segmentations/<organ>.nrrd`` and the
            same under ``radiographer/``.

    Returns:
        As :func:`tolerances_from_hd95` of every non-empty pair's HD95.
    """
    from medseg.io import nifti
    from medseg.metrics import compute_metrics
    from medseg.volume import VolumeKind

    hd95: list[tuple[str, float]] = []
    for scan in sorted(p for p in (Path(root) / "oncologist").iterdir() if p.is_dir()):
        for ref_path in sorted((scan / "segmentations").glob("*.nrrd")):
            other = Path(root) / "radiographer" / scan.name / "segmentations" / ref_path.name
            if not other.is_file():
                continue
            ref = nifti.load(ref_path, VolumeKind.LABELS)
            pred = nifti.load(other, VolumeKind.LABELS)
            r, p = np.asarray(ref.array) > 0, np.asarray(pred.array) > 0
            if not (r.any() and p.any()):
                continue
            m = compute_metrics(
                pred.with_array(p.astype(np.uint8)),
                ref.with_array(r.astype(np.uint8)),
                tolerance_mm=0.0,
            )
            hd95.append((ref_path.stem, m.hausdorff95_mm))
    return tolerances_from_hd95(hd95)


def tolerances_from_hd95(
    hd95: Iterable[tuple[str, float]],
) -> tuple[dict[str, float], dict[str, int]]:
    """Per organ the median of the experts' HD95 values, left and right pooled.

    Args:
        hd95: ``(organ name as the data names it, HD95 in mm)``, one per scan and organ with
            both contours non-empty.

    Returns:
        TG-263 organ name -> tolerance (mm, rounded to 0.01), sorted by name; and the number
        of scan pairs each value is the median of (left and right pooled).
    """
    values: dict[str, list[float]] = {}
    names: dict[str, set[str]] = {}
    for name, value in hd95:
        standard = _standard(name)
        values.setdefault(_organ(standard), []).append(value)
        names.setdefault(_organ(standard), set()).add(standard)
    table: dict[str, float] = {}
    pairs: dict[str, int] = {}
    for organ, organ_values in values.items():
        for standard in names[organ]:
            table[standard] = round(statistics.median(organ_values), 2)
            pairs[standard] = len(organ_values)
    return dict(sorted(table.items())), dict(sorted(pairs.items()))
