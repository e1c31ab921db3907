"""The one Structure type: resolution of types and colours, validation, codes, dumps."""

from __future__ import annotations

import pydantic
import pytest

from medseg.structures import (
    PALETTE,
    CodeSpec,
    InterpretedType,
    Structure,
    structure_set,
    with_standard_names,
)


def test_short_and_list_forms_resolve_alike() -> None:
    short = structure_set({1: "GTV", 2: "Parotid L"})
    listed = structure_set([{"label": 1, "name": "GTV"}, {"label": 2, "name": "Parotid L"}])
    assert short == listed
    assert [s.interpreted_type for s in short] == [InterpretedType.GTV, InterpretedType.ORGAN]
    assert all(s.type is not None and s.color is not None for s in short)


def test_colours_are_distinct_beyond_the_palette_and_skip_explicit_ones() -> None:
    declared = [{"label": 1, "name": "A", "type": "ORGAN", "color": list(PALETTE[0])}]
    declared += [{"label": n, "name": f"S{n}", "type": "ORGAN"} for n in range(2, 61)]
    structures = structure_set(declared)
    colours = [s.display_color for s in structures]
    assert len(set(colours)) == 60  # 20 palette colours, then hues, never one twice
    assert colours[1] == PALETTE[1]  # the explicit first colour is not handed out again


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        pytest.param({"label": 0, "name": "A"}, "greater than or equal to 1", id="label-0"),
        pytest.param({"label": 256, "name": "A"}, "less than or equal to 255", id="label-256"),
        pytest.param({"label": 1, "name": " "}, "non-empty", id="blank-name"),
        pytest.param({"label": 1, "name": "A\\B"}, "without", id="backslash"),
        pytest.param({"label": 1, "name": "x" * 65}, "at most 64", id="long-name"),
        pytest.param({"label": 1, "name": "A", "type": "TUMOUR"}, "Interpreted Type", id="type"),
        pytest.param({"label": 1, "name": "A", "standard_name": "Parotid_Lt"}, "TG-263", id="tg263"),
        pytest.param({"label": 1, "name": "A", "colour": [1, 2, 3]}, "Extra inputs", id="key"),
    ],
)  # fmt: skip
def test_invalid_fields_are_refused(entry: dict[str, object], match: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=match):
        Structure.model_validate(entry)


def test_structures_are_frozen_and_dump_plain_values() -> None:
    (gtv,) = structure_set({1: "GTV"})
    with pytest.raises(pydantic.ValidationError):
        gtv.name = "other"  # type: ignore[misc]
    dumped = gtv.model_dump()
    assert dumped["type"] == "GTV" and type(dumped["type"]) is str
    assert Structure.model_validate(dumped) == gtv


def test_explicit_segment_codes_win_over_derived_ones() -> None:
    (parotid,) = structure_set({1: "Parotid L"})
    category, kind, modifier = parotid.segment_codes()
    assert (kind.meaning, modifier.meaning if modifier else None) == ("Parotid gland", "Left")
    custom = parotid.model_copy(
        update={"seg_type": CodeSpec(value="45206002", meaning="Nasal structure")}
    )
    category2, kind2, modifier2 = custom.segment_codes()
    assert category2 == category and kind2.meaning == "Nasal structure" and modifier2 is None


def test_with_standard_names_fills_only_what_is_missing() -> None:
    structures = structure_set(
        [
            {"label": 1, "name": "Left Parotid"},
            {"label": 2, "name": "Cord", "standard_name": "SpinalCord"},
            {"label": 3, "name": "label_3", "type": "ORGAN"},
        ]
    )
    named, proposed, unmapped = with_standard_names(structures)
    assert [s.standard_name for s in named] == ["Parotid_L", "SpinalCord", None]
    assert proposed == {"Left Parotid": "Parotid_L"}
    assert unmapped == ["label_3"]
