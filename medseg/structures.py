"""A structure, declared once: label value, name, clinical meaning, colour, standard name, codes.

One frozen :class:`Structure` travels from the config (``model.labels``) and ``rois.yaml`` into
every checkpoint and MLflow model, and from there into the RT-STRUCT (ROIName,
RTROIInterpretedType, ROIDisplayColor, the TG-263 name as ROIDescription), the DICOM SEG
(segment label, SNOMED CT category and type), the QA report (one palette) and evaluation.
Nothing downstream guesses a structure's meaning from its name again.

Two spellings are accepted wherever structures are declared:

* the short map of older configs and checkpoints, ``{1: GTV, 2: Parotid L}``: every other
  field is derived (type from :func:`medseg.nomenclature.interpreted_type_for_name`, with a
  warning naming each structure the rule cannot decide, which then becomes ORGAN; colour from
  :data:`PALETTE`);
* a list of full structures::

      - {label: 1, name: GTV, type: GTV}
      - {label: 2, name: Parotid L, type: ORGAN, standard_name: Parotid_L, color: [0, 130, 200]}

  where only ``label`` and ``name`` are required.

>>> [s.type.value for s in structure_set({1: "Tumor", 2: "CTV_High", 3: "Parotid L"})]
['GTV', 'CTV', 'ORGAN']
"""

from __future__ import annotations

import colorsys
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_serializer,
    field_validator,
)

from medseg import nomenclature

__all__ = [
    "MAX_NAME_CHARACTERS",
    "PALETTE",
    "CodeSpec",
    "InterpretedType",
    "Structure",
    "duplicated_fields",
    "structure_set",
    "type_for_name",
    "with_standard_names",
]

#: DICOM LO: ROIName, ROIDescription and SegmentLabel hold at most 64 characters.
MAX_NAME_CHARACTERS = 64

#: Display colours, in the order structures get them when they bring none: Sasha Trubetskoy's
#: "20 distinct colours" (https://sashamaps.net/docs/resources/20-colors/), chosen to be
#: told apart on CT greys. Beyond 20 structures, colours continue round the hue circle.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)  # fmt: skip


class InterpretedType(StrEnum):
    """RT ROI Interpreted Type (3006,00A4): the defined terms of DICOM PS3.3 C.8.8.8.1."""

    EXTERNAL = "EXTERNAL"
    PTV = "PTV"
    CTV = "CTV"
    GTV = "GTV"
    TREATED_VOLUME = "TREATED_VOLUME"
    IRRAD_VOLUME = "IRRAD_VOLUME"
    OAR = "OAR"
    BOLUS = "BOLUS"
    AVOIDANCE = "AVOIDANCE"
    ORGAN = "ORGAN"
    MARKER = "MARKER"
    REGISTRATION = "REGISTRATION"
    ISOCENTER = "ISOCENTER"
    CONTRAST_AGENT = "CONTRAST_AGENT"
    CAVITY = "CAVITY"
    BRACHY_CHANNEL = "BRACHY_CHANNEL"
    BRACHY_ACCESSORY = "BRACHY_ACCESSORY"
    BRACHY_SRC_APP = "BRACHY_SRC_APP"
    BRACHY_CHNL_SHLD = "BRACHY_CHNL_SHLD"
    SUPPORT = "SUPPORT"
    FIXATION = "FIXATION"
    DOSE_REGION = "DOSE_REGION"
    CONTROL = "CONTROL"
    DOSE_MEASUREMENT = "DOSE_MEASUREMENT"

    @property
    def is_target(self) -> bool:
        """GTV, CTV or PTV: a volume to treat, which may be several separate lesions."""
        return self in (InterpretedType.GTV, InterpretedType.CTV, InterpretedType.PTV)


class CodeSpec(BaseModel):
    """One coded concept (DICOM Code Sequence item): value, coding scheme and meaning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: Annotated[str, Field(min_length=1, max_length=64)]
    scheme: Annotated[str, Field(min_length=1, max_length=16)] = "SCT"
    meaning: Annotated[str, Field(min_length=1, max_length=64)]

    @classmethod
    def from_code(cls, code: Any) -> CodeSpec:
        """From a pydicom ``Code`` (``io.seg`` turns a CodeSpec back into one for highdicom)."""
        return cls(value=str(code.value), scheme=str(code.scheme_designator), meaning=code.meaning)


_Colour = tuple[
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
    Annotated[int, Field(ge=0, le=255)],
]


class Structure(BaseModel):
    """One segmented structure, as every writer and reader of medseg sees it.

    Attributes:
        label: value of the structure's voxels in a label map (1..255; 0 is background).
        name: ROIName / SegmentLabel (1-64 characters, no backslash).
        type: the RT ROI Interpreted Type (a DICOM defined term); decided from the name by
            :func:`structure_set` when not given.
        color: display colour (red, green, blue 0-255) in the RT-STRUCT, SEG and report;
            taken from :data:`PALETTE` when not given.
        standard_name: the TG-263 name (e.g. ``Parotid_L``), validated against the TG-263
            nomenclature; written as ROIDescription and SegmentDescription.
        seg_category, seg_type, seg_type_modifier: SNOMED CT Segmented Property Category,
            Type and Type Modifier (laterality) for DICOM SEG; derived from the type and the
            (standard) name by :func:`medseg.nomenclature.segment_codes` when not given.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    label: Annotated[StrictInt, Field(ge=1, le=255)]
    name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARACTERS)]
    type: InterpretedType | None = None
    color: _Colour | None = None
    standard_name: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARACTERS)] | None = None
    seg_category: CodeSpec | None = None
    seg_type: CodeSpec | None = None
    seg_type_modifier: CodeSpec | None = None

    @field_serializer("type")
    def _type_as_text(self, value: InterpretedType | None) -> str | None:
        # plain strings in every dump, so checkpoints (loaded without unpickling classes),
        # YAML and MLflow params hold no Enum objects
        return None if value is None else value.value

    @field_validator("name", mode="before")
    @classmethod
    def _plain_name(cls, name: Any) -> Any:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if len(name) > MAX_NAME_CHARACTERS or "\\" in name:
            raise ValueError(
                f"name must be at most {MAX_NAME_CHARACTERS} characters without '\\', got "
                f"{len(name)} characters: {name!r}"
            )
        return name

    @field_validator("type", mode="before")
    @classmethod
    def _defined_term(cls, value: Any) -> Any:
        if value is not None and value not in nomenclature.INTERPRETED_TYPES:
            raise ValueError(
                f"{value!r} is not an RT ROI Interpreted Type (DICOM PS3.3 C.8.8.8.1); "
                f"expected one of {', '.join(nomenclature.INTERPRETED_TYPES)}"
            )
        return value

    @field_validator("standard_name")
    @classmethod
    def _tg263(cls, standard_name: str | None) -> str | None:
        if standard_name is not None and not nomenclature.is_standard_name(standard_name):
            proposal = nomenclature.propose_standard_name(standard_name)
            hint = f"; did you mean {proposal!r}?" if proposal else ""
            raise ValueError(f"standard_name {standard_name!r} is not a TG-263 name{hint}")
        return standard_name

    @property
    def interpreted_type(self) -> InterpretedType:
        """:attr:`type`, resolved (ORGAN if a structure was built without one)."""
        return self.type if self.type is not None else InterpretedType.ORGAN

    @property
    def display_color(self) -> tuple[int, int, int]:
        """:attr:`color`, resolved (the first palette colour if built without one)."""
        return tuple(self.color) if self.color is not None else PALETTE[0]  # type: ignore[return-value]

    @property
    def hex_color(self) -> str:
        """The display colour as ``#rrggbb`` (for the report)."""
        return "#{:02x}{:02x}{:02x}".format(*self.display_color)

    def segment_codes(self) -> tuple[CodeSpec, CodeSpec, CodeSpec | None]:
        """(category, type, type modifier) codes for DICOM SEG; explicit ones win."""
        derived = nomenclature.segment_codes(
            self.name, self.interpreted_type.value, self.standard_name
        )
        category = self.seg_category or CodeSpec.from_code(derived.category)
        kind = self.seg_type or CodeSpec.from_code(derived.type)
        if self.seg_type_modifier is not None:
            modifier: CodeSpec | None = self.seg_type_modifier
        elif self.seg_type is None and derived.type_modifier is not None:
            modifier = CodeSpec.from_code(derived.type_modifier)
        else:  # a laterality derived for another type would not fit an explicit one
            modifier = None
        return category, kind, modifier


def structure_set(
    declared: Mapping[int, str] | Iterable[Structure | Mapping[str, Any]],
    *,
    where: str = "structures",
) -> tuple[Structure, ...]:
    """Resolve declared structures: types decided, colours assigned, values checked.

    Args:
        declared: the short map ``{label: name}`` or a list of structures (or their dicts).
        where: what the structures came from, for warnings and errors (e.g. ``model.labels``
            or a ``rois.yaml`` path).

    Returns:
        The structures in declaration order, each with ``type`` and ``color`` set; colours
        are distinct (defaults skip colours given explicitly).

    Raises:
        ValueError: a duplicate label or name, or invalid fields (``"<index>.<field>:
            <problem>"`` for each, joined by ``; ``). Config loading turns these into
            :class:`ConfigError`.
    """
    entries: list[Structure] = []
    problems: list[str] = []
    items = (
        [{"label": _label_value(k), "name": v} for k, v in declared.items()]
        if isinstance(declared, Mapping)
        else list(declared)
    )
    for i, item in enumerate(items):
        if isinstance(item, Structure):
            entries.append(item)
            continue
        try:
            entries.append(Structure.model_validate(item))
        except ValidationError as exc:
            for error in exc.errors():
                at = ".".join(str(part) for part in (i, *error["loc"]))
                what = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
                problems.append(f"{at}: {what.removeprefix('Value error, ')}")
    if problems:
        raise ValueError("; ".join(problems))
    _require_distinct(entries, where)
    taken = {tuple(s.color) for s in entries if s.color is not None}
    defaults = _default_colours(taken)
    resolved = []
    for entry in entries:
        update: dict[str, Any] = {}
        if entry.type is None:
            decided = type_for_name(entry.name, entry.standard_name)
            if decided is None:
                warnings.warn(
                    f"{where}: cannot tell the RT ROI Interpreted Type of structure "
                    f"{entry.name!r} (label {entry.label}) from its name; it is written as "
                    "ORGAN. Give it a type in the list form, e.g. "
                    f"{{label: {entry.label}, name: {entry.name}, type: GTV}}",
                    stacklevel=3,
                )
            update["type"] = decided or InterpretedType.ORGAN
        if entry.color is None:
            update["color"] = next(defaults)
        resolved.append(entry.model_copy(update=update) if update else entry)
    return tuple(resolved)


def type_for_name(name: str, standard_name: str | None = None) -> InterpretedType | None:
    """The type :func:`structure_set` gives a structure declared without one: the rule of
    :func:`medseg.nomenclature.interpreted_type_for_name` on its name, then on its standard
    name; None where neither decides (structure_set then warns and uses ORGAN).

    >>> type_for_name("GTV_1"), type_for_name("label_3")
    (<InterpretedType.GTV: 'GTV'>, None)
    """
    decided = nomenclature.interpreted_type_for_name(name)
    if decided is None and standard_name is not None:
        decided = nomenclature.interpreted_type_for_name(standard_name)
    return None if decided is None else InterpretedType(decided)


def _label_value(label: Any) -> int:
    """A short-map key as a label value (YAML keys may arrive as strings from JSON)."""
    # ValueError, not TypeError: pydantic reports only ValueError as a validation error
    if isinstance(label, bool):
        raise ValueError(f"label values must be integers, got {label!r}")  # noqa: TRY004
    if isinstance(label, str) and label.strip().isdigit():
        return int(label)
    if not isinstance(label, int):
        raise ValueError(f"label values must be integers, got {label!r}")  # noqa: TRY004
    return label


def duplicated_fields(structures: Sequence[Structure]) -> dict[str, list[Any]]:
    """Label values and names used by more than one structure (``{"label": [...], ...}``).

    Only fields with repeats are in the result, so an empty dict means they are distinct.
    """
    found: dict[str, list[Any]] = {}
    columns: dict[str, list[Any]] = {
        "label": [s.label for s in structures],
        "name": [s.name for s in structures],
    }
    for what, values in columns.items():
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            found[what] = repeated
    return found


def _require_distinct(entries: Sequence[Structure], where: str) -> None:
    for what, repeated in duplicated_fields(entries).items():
        raise ValueError(f"{where}: duplicate {what}(s) {repeated}")


def _default_colours(taken: set[tuple[int, ...]]) -> Iterator[tuple[int, int, int]]:
    """Palette colours not already taken, then golden-angle hues, never repeating one."""
    for colour in PALETTE:
        if colour not in taken:
            taken.add(colour)
            yield colour
    hue = 0.0
    while True:
        hue = (hue + 0.618033988749895) % 1.0
        red, green, blue = (round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.95))
        colour = (red, green, blue)
        if colour not in taken:
            taken.add(colour)
            yield colour


def with_standard_names(
    structures: Sequence[Structure],
) -> tuple[tuple[Structure, ...], dict[str, str], list[str]]:
    """Propose a TG-263 name for every structure that has none (``Parotid L`` -> ``Parotid_L``).

    Returns:
        ``(structures, proposed, unmapped)``: the structures with the proposals filled in
        (a structure that has a standard name keeps it), name -> proposed standard name, and
        the names no proposal was found for, in order.
    """
    out: list[Structure] = []
    proposed: dict[str, str] = {}
    unmapped: list[str] = []
    for structure in structures:
        if structure.standard_name is None:
            name = nomenclature.propose_standard_name(structure.name)
            if name is None:
                unmapped.append(structure.name)
            else:
                proposed[structure.name] = name
                structure = structure.model_copy(update={"standard_name": name})
        out.append(structure)
    return tuple(out), proposed, unmapped
