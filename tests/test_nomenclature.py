"""Structure names: interpreted-type rules, TG-263 names and DICOM SEG codes.

The SEG codes are checked against pydicom's codedict (the referee); the TG-263 names against the
tg263 package and the examples of the TG-263 report (AAPM Report 263, 2018, §7.2 and §8.2).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.sr.codedict import Collection

from medseg import nomenclature
from medseg.errors import InputError
from medseg.nomenclature import (
    INTERPRETED_TYPE_RULES,
    INTERPRETED_TYPES,
    ConceptCode,
    interpreted_type_for_name,
    is_standard_name,
    laterality,
    propose_standard_name,
    segment_codes,
)
from tests.conftest import require_data

# --- interpreted types ----------------------------------------------------------------------

TYPE_CASES = {
    "GTVp": "GTV", "GTV_1": "GTV", "gtv-primary": "GTV", "GTVn2": "GTV", "iGTV": "GTV",
    "IGTV": "GTV", "Tumor": "GTV", "tumour": "GTV", "Lesion": "GTV", "lesions": "GTV",
    "Metastasis": "GTV", "mets": "GTV", "Nodule": "GTV",
    "CTV": "CTV", "CTV_High": "CTV", "CTVn_Neck": "CTV", "ITV": "CTV", "ITV_1": "CTV",
    "iCTV": "CTV", "ICTV": "CTV", "TumorBed": "CTV", "SurgicalBed": "CTV", "tumour bed": "CTV",
    "PTV": "PTV", "PTV5400": "PTV", "PTV_70Gy": "PTV", "PTV-03": "PTV", "PTV!_Low": "PTV",
    "PTV_GTV": "PTV", "Prostate_PTV": "PTV",
    "Body": "EXTERNAL", "BODY": "EXTERNAL", "External": "EXTERNAL", "EXTERNAL_1": "EXTERNAL",
    "Patient outline": "EXTERNAL", "Skin": "ORGAN",
    "Couch": "SUPPORT", "CouchSurface": "SUPPORT", "Table": "SUPPORT",
    "Bolus": "BOLUS", "Bolus_05mm": "BOLUS",
    "Marker": "MARKER", "Markers": "MARKER", "Fiducial": "MARKER", "Seed": "MARKER",
    "Clips": "MARKER", "Cavity": "CAVITY", "Resection cavity": "CAVITY",
    "SpinalCord_PRV05": "AVOIDANCE", "Brainstem PRV": "AVOIDANCE",
    "zPTVopt": "CONTROL", "_Ring": "CONTROL", "PTV_opt": "CONTROL",
    "Lungs-GTV": "ORGAN", "Body-PTV": "ORGAN", "Bowel bag": "ORGAN",
    "Parotid L": "ORGAN", "Spinal Cord": "ORGAN", "kidney_right": "ORGAN", "Cavity_Oral": "ORGAN",
    "External ear L": "ORGAN", "Iso": "ISOCENTER", "Contrast": "CONTRAST_AGENT",
    "Applicator": "BRACHY_SRC_APP", "Channel 1": "BRACHY_CHANNEL", "TLD_1": "DOSE_MEASUREMENT",
    "IDL_5000": "DOSE_REGION", "Thermoplastic mask": "FIXATION",
}  # fmt: skip

#: Realistic label names the rules leave undecided (the caller warns and uses ORGAN).
UNDECIDED = [
    "label_3", "structure1", "roi", "Segment_1", "mask", "OAR", "Boost", "Eval", "HTV",
    "Prosthesis", "Hip prosthesis L", "Pacemaker", "hip_implant", "Foley", "Nodes",
    "kidney_cyst_left", "gluteus_maximus_left", "sternum", "Parotid", "NS_Brain",
]  # fmt: skip


def test_interpreted_types_are_dicom_defined_terms() -> None:
    from medseg.io.rtstruct import INTERPRETED_TYPES as RTSTRUCT_TYPES
    from medseg.structures import InterpretedType

    assert len(INTERPRETED_TYPES) == len(set(INTERPRETED_TYPES)) == 24
    assert set(INTERPRETED_TYPES) == set(RTSTRUCT_TYPES)
    assert INTERPRETED_TYPES == tuple(t.value for t in InterpretedType)  # one list, two views


def test_every_rule_gives_a_defined_term() -> None:
    assert {t for _, t in INTERPRETED_TYPE_RULES} <= {*INTERPRETED_TYPES, None}


@pytest.mark.parametrize(("name", "expected"), TYPE_CASES.items(), ids=list(TYPE_CASES))
def test_interpreted_type_rules(name: str, expected: str) -> None:
    assert interpreted_type_for_name(name) == expected


@pytest.mark.parametrize("name", UNDECIDED, ids=UNDECIDED)
def test_undecided_names(name: str) -> None:
    assert interpreted_type_for_name(name) is None


@given(st.text(max_size=40))
def test_any_text_gives_a_defined_term_or_none(name: str) -> None:
    assert interpreted_type_for_name(name) in {*INTERPRETED_TYPES, None}
    proposal = propose_standard_name(name)
    assert proposal is None or is_standard_name(proposal)


# --- TG-263 names ---------------------------------------------------------------------------

#: TG-263 report examples: §7.2 (non-target) and §8.2 (targets), plus tg263 table forms.
STANDARD = [
    "Parotid_L", "SpinalCord", "Brainstem", "Glnd_Submand_L", "Lung~_L", "Lungs^Ex", "Brain~",
    "Bolus_05mm", "SpinalCord_PRV05", "Brainstem_PRV03", "OpticNrv_PRV03_L", "Parotid_PRV05_L",
    "GTVp", "PTVn", "CTVsb", "GTVpar", "CTVv", "CTVvas", "PTV1", "GTVp2", "PTVp1_CT1PT1",
    "GTV_CT2", "CTV_A_Aorta", "GTV_Preop", "PTV_Boost", "PTV_Eval", "PTV_MR2_Prostate",
    "PTV_High", "CTV_Low", "PTV_Mid01", "PTV_5040", "PTV_50.4Gy", "PTV_50p4Gy",
    "PTV_Liver_2000x3", "PTV_Liver_20Gyx3", "PTV_Eval_7000-08", "PTV-03", "CTVp2-05",
    "PTV^Physician1", "GTV_Liver^ICG", "PTV!_Low", "IGTV", "ICTV", "ITV",
]  # fmt: skip
NOT_STANDARD = [
    "parotid_l", "Parotid L", "PAROTID_L", "GTV_1", "gtv", "PTV5400", "Spinal Cord", "Tumor",
    "Parotid_L^QualifierTooLong", "OpticChiasm_PRV03", "XTV", "", "Parotid_R_PRV05", "CTVx",
]  # fmt: skip


@pytest.mark.parametrize("name", STANDARD, ids=STANDARD)
def test_standard_names(name: str) -> None:
    assert is_standard_name(name)


@pytest.mark.parametrize("name", NOT_STANDARD, ids=[n or "empty" for n in NOT_STANDARD])
def test_not_standard_names(name: str) -> None:
    assert not is_standard_name(name)


PROPOSALS = {
    "Parotid L": "Parotid_L", "parotid_left": "Parotid_L", "Left Parotid": "Parotid_L",
    "Parotid-Lt": "Parotid_L", "Parotid_L": "Parotid_L", "Parotid gland R": "Parotid_R",
    "Spinal Cord": "SpinalCord", "spinal_cord": "SpinalCord", "SpinalCord": "SpinalCord",
    "Brain Stem": "Brainstem", "brainstem": "Brainstem", "Optic Nerve R": "OpticNrv_R",
    "OpticNerve_R": "OpticNrv_R", "optic_nerve_right": "OpticNrv_R",
    "Optic Chiasm": "OpticChiasm", "chiasm": "OpticChiasm", "Submandibular L": "Glnd_Submand_L",
    "Submandibular_L": "Glnd_Submand_L", "Mandible": "Bone_Mandible", "Lens L": "Lens_L",
    "Lens_left": "Lens_L", "Cochlea R": "Cochlea_R", "Eye L": "Eye_L", "Lung L": "Lung_L",
    "lung_left": "Lung_L", "Lungs": "Lungs", "Brain": "Brain", "Liver": "Liver",
    "Kidney R": "Kidney_R", "kidney_right": "Kidney_R", "Urinary bladder": "Bladder",
    "bladder": "Bladder", "Esophagus": "Esophagus", "oesophagus": "Esophagus", "Heart": "Heart",
    "Spleen": "Spleen", "Stomach": "Stomach", "Pancreas": "Pancreas",
    "Gallbladder": "Gallbladder", "Prostate": "Prostate", "Rectum": "Rectum",
    "Femoral head L": "Femur_Head_L", "femur_left": "Femur_L", "Thyroid": "Glnd_Thyroid",
    "thyroid_gland": "Glnd_Thyroid", "Trachea": "Trachea", "Larynx": "Larynx",
    "Aorta": "A_Aorta", "Body": "Body", "BODY": "Body", "External": "External",
    "Outline": "Body", "GTV": "GTV", "tumour": "GTV", "Tumor": "GTV", "Lesion 2": "GTV2",
    "CTV": "CTV", "PTV": "PTV", "GTV_1": "GTV1", "gtv-primary": "GTVp", "PTV5400": "PTV_5400",
    "ptv 70 gy": "PTV_70Gy", "ctv high": "CTV_High", "iGTV": "IGTV", "itv": "ITV",
    "Spinal cord PRV 5": "SpinalCord_PRV05", "Optic nerve L PRV3": "OpticNrv_PRV03_L",
    "vertebrae_T9": "VB_T09", "rib_left_3": "Rib03_L",
}  # fmt: skip
NO_PROPOSAL = [
    "label_3", "Parotid", "Parotid L+R", "zPTV", "Lungs - GTV", "kidney_cyst_left", "Couch",
    "lung_middle_lobe_left", "PTV L", "portal_vein_and_splenic_vein",
]  # fmt: skip


@pytest.mark.parametrize(("name", "expected"), PROPOSALS.items(), ids=list(PROPOSALS))
def test_propose_standard_name(name: str, expected: str) -> None:
    assert propose_standard_name(name) == expected
    assert is_standard_name(expected)


@pytest.mark.parametrize("name", NO_PROPOSAL, ids=NO_PROPOSAL)
def test_no_proposal(name: str) -> None:
    assert propose_standard_name(name) is None


LATERALITY = {
    "Parotid_L": "L", "Parotid-Rt": "R", "lens_left": "L", "kidney_right": "R", "Lt Femur": "L",
    "OpticNrv_PRV03_L": "L", "rib_left_3": "L", "Brainstem": None, "GTVp": None,
    "Parotid L+R": None, "Lungs": None, "Rectum": None, "Larynx": None, "LN_Neck_II": None,
}  # fmt: skip


@pytest.mark.parametrize(("name", "side"), LATERALITY.items(), ids=list(LATERALITY))
def test_laterality(name: str, side: str | None) -> None:
    assert laterality(name) == side
    proposal = propose_standard_name(name)
    if side is not None and proposal is not None:  # the same side as the TG-263 name
        assert proposal.endswith(f"_{side}")


def test_hn_oar_label_names() -> None:
    """Every organ of the DeepMind H&N set (file stems, both annotators) has a TG-263 name."""
    root = require_data("hn-oar-labels")
    stems = {p.stem for p in root.glob("*/*/segmentations/*.nrrd")}
    expected = {
        "Brain": "Brain", "Brainstem": "Brainstem", "Cochlea-Lt": "Cochlea_L",
        "Cochlea-Rt": "Cochlea_R", "Lacrimal-Lt": "Glnd_Lacrimal_L",
        "Lacrimal-Rt": "Glnd_Lacrimal_R", "Lens-Lt": "Lens_L", "Lens-Rt": "Lens_R",
        "Lung-Lt": "Lung_L", "Lung-Rt": "Lung_R", "Mandible": "Bone_Mandible",
        "Optic-Nerve-Lt": "OpticNrv_L", "Optic-Nerve-Rt": "OpticNrv_R", "Orbit-Lt": "Orbit_L",
        "Orbit-Rt": "Orbit_R", "Parotid-Lt": "Parotid_L", "Parotid-Rt": "Parotid_R",
        "Spinal-Canal": "SpinalCanal", "Spinal-Cord": "SpinalCord",
        "Submandibular-Lt": "Glnd_Submand_L", "Submandibular-Rt": "Glnd_Submand_R",
    }  # fmt: skip
    assert stems == set(expected)
    assert {s: propose_standard_name(s) for s in stems} == expected
    assert {interpreted_type_for_name(s) for s in stems} == {"ORGAN"}


#: TotalSegmentator class names, from wasserth/TotalSegmentator totalsegmentator/map_to_binary.py
#: (class_map["total"], v2, and class_map["head_glands_cavities"]); the fixture is this list.
TOTALSEG_MAPPED = {
    "spleen": "Spleen", "kidney_right": "Kidney_R", "kidney_left": "Kidney_L",
    "gallbladder": "Gallbladder", "liver": "Liver", "stomach": "Stomach", "pancreas": "Pancreas",
    "adrenal_gland_right": "Glnd_Adrenal_R", "adrenal_gland_left": "Glnd_Adrenal_L",
    "lung_upper_lobe_left": "Lung_LUL", "lung_lower_lobe_left": "Lung_LLL",
    "lung_upper_lobe_right": "Lung_RUL", "lung_middle_lobe_right": "Lung_RML",
    "lung_lower_lobe_right": "Lung_RLL", "esophagus": "Esophagus", "trachea": "Trachea",
    "thyroid_gland": "Glnd_Thyroid", "small_bowel": "Bowel_Small", "duodenum": "Duodenum",
    "colon": "Colon", "urinary_bladder": "Bladder", "prostate": "Prostate", "sacrum": "Sacrum",
    "vertebrae_S1": "VB_S1", "vertebrae_L5": "VB_L5", "vertebrae_L1": "VB_L1",
    "vertebrae_T12": "VB_T12", "vertebrae_T1": "VB_T01", "vertebrae_C7": "VB_C7",
    "vertebrae_C1": "VB_C1", "heart": "Heart", "aorta": "A_Aorta",
    "pulmonary_vein": "V_Pulmonary", "brachiocephalic_trunk": "A_Brachiocephls",
    "subclavian_artery_right": "A_Subclavian_R", "subclavian_artery_left": "A_Subclavian_L",
    "common_carotid_artery_right": "A_Carotid_R", "common_carotid_artery_left": "A_Carotid_L",
    "brachiocephalic_vein_left": "V_Brachioceph_L", "brachiocephalic_vein_right": "V_Brachioceph_R",
    "superior_vena_cava": "V_Venacava_S", "inferior_vena_cava": "V_Venacava_I",
    "iliac_artery_left": "A_Iliac_L", "iliac_artery_right": "A_Iliac_R",
    "iliac_vena_left": "V_Iliac_L", "iliac_vena_right": "V_Iliac_R",
    "humerus_left": "Humerus_L", "humerus_right": "Humerus_R", "scapula_left": "Scapula_L",
    "scapula_right": "Scapula_R", "clavicula_left": "Clavicle_L", "clavicula_right": "Clavicle_R",
    "femur_left": "Femur_L", "femur_right": "Femur_R", "hip_left": "Bone_Pelvic_L",
    "hip_right": "Bone_Pelvic_R", "spinal_cord": "SpinalCord", "brain": "Brain", "skull": "Skull",
    "rib_left_1": "Rib01_L", "rib_right_12": "Rib12_R", "eye_left": "Eye_L", "eye_right": "Eye_R",
    "eye_lens_left": "Lens_L", "eye_lens_right": "Lens_R", "optic_nerve_left": "OpticNrv_L",
    "optic_nerve_right": "OpticNrv_R", "parotid_gland_left": "Parotid_L",
    "parotid_gland_right": "Parotid_R", "submandibular_gland_left": "Glnd_Submand_L",
    "submandibular_gland_right": "Glnd_Submand_R", "nasopharynx": "Nasopharynx",
    "oropharynx": "Oropharynx", "hypopharynx": "Laryngl_Pharynx", "soft_palate": "Palate_Soft",
    "hard_palate": "Hardpalate",
}  # fmt: skip
#: ... and those with no TG-263 name in the tg263 table (or no safe reading).
TOTALSEG_UNMAPPED = [
    "kidney_cyst_left", "kidney_cyst_right", "atrial_appendage_left",
    "portal_vein_and_splenic_vein", "gluteus_maximus_left", "gluteus_medius_left",
    "gluteus_minimus_left", "autochthon_left", "iliopsoas_left", "sternum", "costal_cartilages",
    "nasal_cavity_left", "auditory_canal_left",
]  # fmt: skip


def test_totalsegmentator_names() -> None:
    assert {n: propose_standard_name(n) for n in TOTALSEG_MAPPED} == TOTALSEG_MAPPED
    assert all(is_standard_name(s) for s in TOTALSEG_MAPPED.values())
    assert [n for n in TOTALSEG_UNMAPPED if propose_standard_name(n) is not None] == []


def test_synonyms_point_at_standard_roots() -> None:
    """Every synonym target is a TG-263 name, alone or with a side (a typo would never match)."""
    for word, root in nomenclature._SYNONYMS.items():
        forms = [root.format(s=s) for s in "LR"] if "{s}" in root else [root, f"{root}_L"]
        assert any(is_standard_name(f) for f in forms), (word, root)


# --- DICOM SEG codes ------------------------------------------------------------------------


def _in_codedict(code: ConceptCode) -> bool:
    """The referee: pydicom's codedict has this keyword with this value and meaning."""
    known = getattr(Collection(code.scheme_designator), code.keyword)
    return (known.value, known.scheme_designator, known.meaning) == (
        code.value, code.scheme_designator, code.meaning,
    )  # fmt: skip


def test_every_code_is_a_codedict_concept() -> None:
    tables = [*nomenclature._ORGAN_CODES.values(), *nomenclature._SIDES.values()]
    for codes in [*nomenclature._TYPE_CODES.values(), nomenclature._ORGAN]:
        tables += [codes.category, codes.type]
    bad = [c for c in tables if not _in_codedict(c)]
    assert bad == []
    assert {c.scheme_designator for c in tables} == {"SCT", "DCM"}


def test_organ_table_keys_are_tg263_roots() -> None:
    lateral = {"VB": "VB_C1", "Rib": "Rib01_L"}
    for root in nomenclature._ORGAN_CODES:
        forms = [lateral.get(root, root), f"{root}_L"]
        assert any(is_standard_name(f) for f in forms), root


def test_parotid_left_codes() -> None:
    codes = segment_codes("Parotid L", "ORGAN")
    assert (codes.category.keyword, codes.type.keyword) == ("AnatomicalStructure", "ParotidGland")
    assert (codes.type.value, codes.type.scheme_designator) == ("45289007", "SCT")
    assert codes.type_modifier is not None
    assert (codes.type_modifier.value, codes.type_modifier.meaning) == ("7771000", "Left")


def test_standard_name_wins_over_the_name() -> None:
    codes = segment_codes("label_7", "OAR", standard_name="Kidney_R")
    assert codes.type.keyword == "Kidney"
    assert codes.type_modifier is not None and codes.type_modifier.value == "24028007"


CODE_CASES = {
    "GTV": ("GTVp", "GTV", "MorphologicallyAbnormalStructure", "Neoplasm"),
    "CTV": ("CTV_High", "CTV", "SpatialAndRelationalConcept", "ClinicalTargetVolume"),
    "PTV": ("PTV_5040", "PTV", "SpatialAndRelationalConcept", "PlanningTargetVolume"),
    "unknown organ": ("label_3", "ORGAN", "AnatomicalStructure", "Organ"),
    "external": ("BODY", "EXTERNAL", "AnatomicalStructure", "EntireBody"),
    "couch": ("Couch", "SUPPORT", "PhysicalObject", "Table"),
    "marker": ("Seed", "MARKER", "PhysicalObject", "OpaqueMarker"),
    "bolus": ("Bolus", "BOLUS", "PhysicalObject", "SurfaceBolus"),
    "PRV": ("SpinalCord_PRV05", "AVOIDANCE", "AnatomicalStructure", "Organ"),
    "lung lobe": ("lung_upper_lobe_left", "ORGAN", "AnatomicalStructure", "UpperLobeOfLung"),
    "brachy channel": ("Channel 1", "BRACHY_CHANNEL", "PhysicalObject", "BrachytherapyChannel"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kind", "category", "type_"), CODE_CASES.values(), ids=list(CODE_CASES)
)
def test_segment_codes(name: str, kind: str, category: str, type_: str) -> None:
    codes = segment_codes(name, kind)
    assert (codes.category.keyword, codes.type.keyword) == (category, type_)
    assert _in_codedict(codes.category) and _in_codedict(codes.type)


def test_targets_have_no_laterality_and_pairs_are_bilateral() -> None:
    assert segment_codes("GTV_Parotid_L", "GTV").type_modifier is None
    lungs = segment_codes("Lungs", "ORGAN")
    assert lungs.type.keyword == "Lung"
    assert lungs.type_modifier is not None and lungs.type_modifier.keyword == "Bilateral"
    lobe = segment_codes("lung_upper_lobe_left", "ORGAN").type_modifier
    assert lobe is not None and lobe.keyword == "Left"


@pytest.mark.parametrize("kind", INTERPRETED_TYPES, ids=list(INTERPRETED_TYPES))
def test_every_interpreted_type_has_codedict_codes(kind: str) -> None:
    codes = segment_codes("x", kind)
    assert _in_codedict(codes.category) and _in_codedict(codes.type)


def test_unknown_interpreted_type_is_refused() -> None:
    with pytest.raises(InputError, match="'ITV' for structure 'ITV'"):
        segment_codes("ITV", "ITV")


def test_module_stays_free_of_pydicom() -> None:
    """STYLE allows pydicom only under io/ (test_exported_members greps for the import text)."""
    text = Path(nomenclature.__file__).read_text(encoding="utf-8")
    assert "import pydicom" not in text and "from pydicom" not in text
