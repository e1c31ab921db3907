"""Structure names: RT ROI Interpreted Type, TG-263 standard name and DICOM SEG codes.

Pure functions over names; no DICOM I/O. Three questions are answered for a label name such as
``"Parotid-Lt"``, ``"GTVp"`` or ``"kidney_right"``:

- :func:`interpreted_type_for_name`: its RT ROI Interpreted Type (DICOM PS3.3 C.8.8.8.1), from the
  explicit rule table :data:`INTERPRETED_TYPE_RULES`, then the TG-263 table; None when undecided.
- :func:`propose_standard_name` / :func:`is_standard_name`: its AAPM TG-263 name (Mayo et al.,
  AAPM Report 263, Med. Phys. 45(10), 2018), checked with the ``tg263`` package's table plus the
  report's target (§8.2) and PRV (§7.2 rule 10) rules, which that table covers only in part.
- :func:`segment_codes`: its DICOM SEG Segmented Property Category / Type (CID 7150 / 7151).

Names are compared token by token: split on non-alphanumerics, camelCase and digit runs, so
``"GTVp"``, ``"GTV_1"``, ``"gtv-primary"``, ``"PTV5400"`` and ``"SpinalCord"`` all tokenise.

Decisions a reviewer should check (each rule carries its source):

- ITV -> CTV. DICOM has no ITV term; an ITV (ICRU 62) is a CTV plus an internal margin, so it is a
  clinical target volume. ICTV -> CTV and IGTV -> GTV as in the dicom/raystation-scripts ROI
  templates (``settings/rois.py``: ``ROI('ICTV', 'Ctv')``, ``ROI('IGTV', 'Gtv')``).
- PRV -> AVOIDANCE ("region in which dose is to be minimized", C.8.8.8.1); raystation-scripts
  types ``SpinalCord_PRV`` as ``Avoidance``; TG-263 lists PRVs apart from anatomy.
- Body / External / Outline -> EXTERNAL (Eclipse names its external contour BODY); TG-263
  ``Skin`` is an anatomic rind, so Skin -> ORGAN. ``propose_standard_name`` keeps the word the
  user chose: TG-263 has both ``Body`` ("only the body") and ``External`` ("body plus other
  external items"); an outline becomes ``Body``.
- Tumour / surgical bed -> CTV (raystation-scripts: ``ROI('SurgicalBed', 'Ctv')``).
- ``z`` or ``_`` prefix, ``opt``, ``ring`` -> CONTROL: TG-263 §7.2 rule 15 reserves the prefix for
  structures not used for dose evaluation, which is what CONTROL means.

SEG codes are stored as :class:`ConceptCode` values copied out of pydicom's ``codedict`` (keyword
kept, so a test checks every one against it); this module stays free of pydicom, which STYLE
allows only under ``io/``. ``io/seg.py`` turns one into a pydicom ``Code`` with
``Code(c.value, c.scheme_designator, c.meaning)``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import tg263

from medseg.errors import InputError

__all__ = [
    "INTERPRETED_TYPES",
    "INTERPRETED_TYPE_RULES",
    "MAX_STANDARD_NAME_CHARS",
    "ConceptCode",
    "SegmentCodes",
    "interpreted_type_for_name",
    "is_standard_name",
    "laterality",
    "propose_standard_name",
    "segment_codes",
]

#: RT ROI Interpreted Types defined by DICOM PS3.3 C.8.8.8.1 (same list as io/rtstruct.py).
INTERPRETED_TYPES: tuple[str, ...] = (
    "EXTERNAL", "PTV", "CTV", "GTV", "TREATED_VOLUME", "IRRAD_VOLUME", "OAR", "BOLUS",
    "AVOIDANCE", "ORGAN", "MARKER", "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT", "CAVITY",
    "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD", "SUPPORT",
    "FIXATION", "DOSE_REGION", "CONTROL", "DOSE_MEASUREMENT",
)  # fmt: skip

#: TG-263 §7.2 rule 1: "All structure names are limited to 16 characters or fewer".
MAX_STANDARD_NAME_CHARS = 16

_WORD = re.compile(r"[A-Z][a-z]+|[A-Z]+|[a-z]+|[0-9]+")
# "Lungs-GTV" (organ minus target, TG-263 "Derived") but not "PTV-03" (cropped by 3 mm)
_MINUS_TARGET = re.compile(r"(?<=[A-Za-z0-9~])\s*-\s*(?=(?:I?GTV|I?CTV|ITV|PTV))", re.IGNORECASE)
_LATERALITY = {"l": "L", "lt": "L", "left": "L", "r": "R", "rt": "R", "right": "R"}


def _tokens(name: str) -> list[str]:
    """Lower-case tokens; a leading ``_`` (TG-263's alternative to ``z``) becomes ``z``."""
    words = [w.lower() for w in _WORD.findall(_MINUS_TARGET.sub(" minus ", name))]
    return ["z", *words] if name.startswith("_") else words


def _rule(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


_NOT_TARGET_FIRST = r"^ (?!(?:i|igtv|ictv|gtv|ctv|itv|ptv) )"
_EXTERNAL_WORD = r"(?:body|external|outline|ext)"
_EXTERNAL_EXTRA = r"(?: (?:body|external|outline|ext|patient|contour|surface|[0-9]+))*"

#: (pattern, type) rules, first match wins; a None type means "undecided" on purpose. Each
#: pattern is searched in the name's tokens joined as ``" tok tok "`` (lower case, one space
#: around each token). Names no rule matches go on to the TG-263 table: a name whose proposed
#: standard name is anatomic is an ORGAN.
INTERPRETED_TYPE_RULES: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (_rule(r"^ z "), "CONTROL"),  # zPTVopt, _Ring: TG-263 §7.2 rule 15
    (_rule(r" (?:opt|ring) "), "CONTROL"),
    (_rule(r" (?:prv|avoid|avoidance) "), "AVOIDANCE"),  # SpinalCord_PRV05
    (_rule(_NOT_TARGET_FIRST + r".* minus "), "ORGAN"),  # Lungs-GTV, Body-PTV: normal tissue
    (_rule(r" ptv "), "PTV"),  # PTV outranks the CTV/GTV it was grown from: PTV_GTV is a PTV
    (_rule(r" (?:itv|ictv|i ctv) "), "CTV"),  # ICRU 62 ITV = CTV + internal margin
    (_rule(r" ctvs? "), "CTV"),
    (_rule(r" (?:igtv|i gtv|gtvs?) "), "GTV"),
    (_rule(r" (?:(?:tumou?r|surgical|operative|resection|prostate) bed|tumou?rbed) "), "CTV"),
    (_rule(r" (?:tumou?rs?|lesions?|metastas[ie]s|mets?|nodules?) "), "GTV"),
    (_rule(rf"^{_EXTERNAL_EXTRA} {_EXTERNAL_WORD}{_EXTERNAL_EXTRA} $"), "EXTERNAL"),
    (_rule(r" (?:couch|table|tabletop|support) "), "SUPPORT"),
    (_rule(r" (?:immobili[sz]ation|fixation|thermoplastic|vaclok|vacbag|headrest) "), "FIXATION"),
    (_rule(r" bolus "), "BOLUS"),
    (_rule(r" (?:markers?|fiducials?|fid|seeds?|clips?|bbs?|gold) "), "MARKER"),
    (_rule(r" (?:iso|isoc|isocent(?:er|re)) "), "ISOCENTER"),
    (_rule(r" contrast "), "CONTRAST_AGENT"),
    (_rule(r" (?:applicators?|tandem|ovoids?|cylinder) "), "BRACHY_SRC_APP"),
    (_rule(r" channels? "), "BRACHY_CHANNEL"),
    (_rule(r" (?:tlds?|diodes?|dosimeters?|mosfets?|osld|ion chamber) "), "DOSE_MEASUREMENT"),
    (_rule(r" (?:idl|isodose|dose) "), "DOSE_REGION"),  # TG-263 IDL_5000: an isodose line
    (_rule(r"^ (?:(?:resection|surgical|post|op|postop) )*cavity(?: [0-9]+)? $"), "CAVITY"),
    (_rule(r" (?:bowel bag|bag bowel|bowelbag) "), "ORGAN"),  # raystation-scripts: Organ
    # objects inside the patient have no DICOM term (TG-263 lists Prosthesis as anatomic)
    (_rule(r" (?:prosthes[ie]s|implants?|pacemaker|icd|port a cath|portacath) "), None),
)

# TG-263 target types whose tg263 table entry makes a name an ORGAN ("Anatomic " has a space)
_ORGAN_TARGET_TYPES = frozenset({"Anatomic", "Derived", "Surgical"})


def interpreted_type_for_name(name: str) -> str | None:
    """The RT ROI Interpreted Type a structure name implies, or None when no rule decides.

    Rules: :data:`INTERPRETED_TYPE_RULES` in order, then ORGAN for names whose TG-263 name
    (the name itself or :func:`propose_standard_name`'s proposal) is anatomic, or derived from
    anatomy (``Lungs-GTV``).

    Args:
        name: a label or ROI name, any case and separators (``"GTVp"``, ``"Parotid L"``).

    Returns:
        One of :data:`INTERPRETED_TYPES`, or None (the caller warns and uses ORGAN).

    >>> [interpreted_type_for_name(n) for n in ("GTV_1", "ITV", "Parotid L", "label_3")]
    ['GTV', 'CTV', 'ORGAN', None]
    """
    joined = " " + " ".join(_tokens(name)) + " "
    for pattern, interpreted_type in INTERPRETED_TYPE_RULES:
        if pattern.search(joined):
            return interpreted_type
    standard = propose_standard_name(name)
    entry = _tg263_entry(standard) if standard is not None else None
    if entry is not None and entry.target_type.strip() in _ORGAN_TARGET_TYPES:
        return "ORGAN"
    return None


# --- TG-263 names -------------------------------------------------------------------------

_PRIMARY = {s.primary_name.strip(): s for s in tg263.ALLOWED_STRUCTURES}
# table names without templates ("xx") or stray spaces, longest first (for regex alternation)
_PLAIN = sorted(
    (
        n for n, s in _PRIMARY.items()
        if s.target_type != "Target" and "xx" not in n and " " not in n
    ),
    key=len, reverse=True,
)  # fmt: skip
_QUALIFIER = r"(?:\^[\w+-]+)?"  # TG-263 custom qualifier, e.g. Lungs^Ex
#: TG-263 §8.2 target names: type, classifier, enumerator, imaging, structure indicators (any
#: non-target table name, e.g. Preop, A_Aorta), dose (High/Mid01/Low, cGy, Gy, 50p4Gy, x
#: fractions), cropping (-03), qualifier. A cGy dose has 3 to 5 digits (the report's examples:
#: 5040, 7000, 2000x3), so ``GTV_1`` is not read as 1 cGy. The tg263 package misses dose values
#: and most classifiers (PTV_5040, PTV_50.4Gy, GTVpar, CTVvas).
_TARGET_NAME = re.compile(
    r"(?:GTV|CTV|ITV|IGTV|ICTV|PTV!?)(?:p|n|sb|par|v|vas)?[0-9]{0,2}"
    r"(?:_(?:(?:CT|PT|MR|SP)[0-9]+)+)?"
    r"(?:_(?:" + "|".join(re.escape(n) for n in _PLAIN) + r"))*"
    r"(?:_(?:High|Low|Mid(?:[0-9]{2})?|(?:[0-9]+(?:[.p][0-9]+)?Gy|[0-9]{3,5})(?:x[0-9]+)?))?"
    r"(?:-[0-9]{2})?" + _QUALIFIER
)
_LATERAL_ROOTS = sorted({n[:-2] for n in _PLAIN if n.endswith(("_L", "_R"))}, key=len, reverse=True)
_MIDLINE = [
    n for n in _PLAIN
    if _PRIMARY[n].target_type.strip() == "Anatomic" and not n.endswith(("_L", "_R"))
]  # fmt: skip
#: TG-263 §7.2 rule 10 (PRV + optional 2-digit margin in mm) with rule 7 (laterality last):
#: SpinalCord_PRV05, OpticNrv_PRV03_L. The tg263 table lists only a few PRVs.
_PRV_NAME = re.compile(
    r"(?:(?:" + "|".join(re.escape(n) for n in _MIDLINE) + r")_PRV[0-9]{0,2}"
    r"|(?:" + "|".join(re.escape(n) for n in _LATERAL_ROOTS) + r")_PRV[0-9]{0,2}_[LR])" + _QUALIFIER
)


def _key(name: str) -> str:
    return name.lower().replace("_", "")


def _unique_index(names: list[str]) -> dict[str, str]:
    keys: dict[str, list[str]] = {}
    for name in names:
        keys.setdefault(_key(name), []).append(name)
    return {k: v[0] for k, v in keys.items() if len(v) == 1}  # VB_S / VBs both give "vbs"


_INDEX = _unique_index(_PLAIN)


@functools.lru_cache(maxsize=4096)
def _tg263_entry(name: str) -> tg263.structure.Structure | None:
    return next((s for s in tg263.ALLOWED_STRUCTURES if s.regex.fullmatch(name)), None)


@functools.lru_cache(maxsize=4096)
def is_standard_name(name: str) -> bool:
    """Whether ``name`` is a valid TG-263 name (case-sensitive, at most 16 characters).

    Valid: any name of the ``tg263`` package's table with its suffix forms (``Parotid_L``,
    ``Lung~_L``, ``Lungs^Ex``, ``Bolus_05mm``), target names per TG-263 §8.2 (``GTVp``,
    ``CTV_High``, ``PTV_5040``, ``PTV_50.4Gy``, ``PTV-03``) and PRVs per §7.2 rule 10
    (``SpinalCord_PRV05``, ``Parotid_PRV03_L``).

    >>> [is_standard_name(n) for n in ("Parotid_L", "GTVp", "PTV_5400", "parotid_l", "GTV_1")]
    [True, True, True, False, False]
    """
    if not 0 < len(name) <= MAX_STANDARD_NAME_CHARS:
        return False
    return bool(_TARGET_NAME.fullmatch(name) or _PRV_NAME.fullmatch(name) or _tg263_entry(name))


_TARGET_TYPES = {
    "gtv": "GTV", "ctv": "CTV", "itv": "ITV", "igtv": "IGTV", "ictv": "ICTV", "ptv": "PTV",
}  # fmt: skip
_TUMOUR_WORDS = frozenset({
    "tumor", "tumour", "tumors", "tumours", "lesion", "lesions", "metastasis", "metastases",
    "mets", "nodule", "nodules",
})  # fmt: skip
#: TG-263 §8.2 rule 2 target classifiers, from the words labels use for them.
_CLASSIFIERS = {
    "p": "p", "primary": "p", "prim": "p", "n": "n", "node": "n", "nodes": "n", "nodal": "n",
    "sb": "sb", "par": "par", "v": "v", "vas": "vas",
}  # fmt: skip

#: Label words -> TG-263 root (a ``{s}`` takes the side letter, else ``_L``/``_R`` is appended).
_SYNONYMS = {
    "parotid gland": "Parotid", "submandibular": "Glnd_Submand",
    "submandibular gland": "Glnd_Submand", "lacrimal": "Glnd_Lacrimal",
    "lacrimal gland": "Glnd_Lacrimal", "thyroid": "Glnd_Thyroid", "thyroid gland": "Glnd_Thyroid",
    "adrenal": "Glnd_Adrenal", "adrenal gland": "Glnd_Adrenal", "optic nerve": "OpticNrv",
    "chiasm": "OpticChiasm", "chiasma": "OpticChiasm", "optic chiasma": "OpticChiasm",
    "external ear": "Ear_External", "inner ear": "Ear_Internal", "middle ear": "Ear_Middle",
    "eyeball": "Eye", "globe": "Eye", "eye lens": "Lens", "oesophagus": "Esophagus",
    "mandible": "Bone_Mandible", "hyoid": "Bone_Hyoid", "oral cavity": "Cavity_Oral",
    "nasal cavity": "Cavity_Nasal", "soft palate": "Palate_Soft",
    "hypopharynx": "Laryngl_Pharynx",  # TG-263 "Laryngeal pharynx" = hypopharynx
    "urinary bladder": "Bladder", "small bowel": "Bowel_Small", "small intestine": "Bowel_Small",
    "large bowel": "Bowel_Large", "bowel bag": "Bag_Bowel", "seminal vesicle": "SeminalVes",
    "seminal vesicles": "SeminalVes", "brachial plexus": "BrachialPlex",
    "femoral head": "Femur_Head", "femur head": "Femur_Head", "head of femur": "Femur_Head",
    "clavicula": "Clavicle",  # TotalSegmentator spelling
    "hip": "Bone_Pelvic",  # TotalSegmentator hip_left = one hip bone = TG-263 "Bony Pelvis Left"
    "aorta": "A_Aorta", "pulmonary artery": "A_Pulmonary", "pulmonary vein": "V_Pulmonary",
    "common carotid artery": "A_Carotid", "subclavian artery": "A_Subclavian",
    "brachiocephalic trunk": "A_Brachiocephls", "brachiocephalic vein": "V_Brachioceph",
    "superior vena cava": "V_Venacava_S", "inferior vena cava": "V_Venacava_I",
    "iliac artery": "A_Iliac", "iliac vena": "V_Iliac", "iliac vein": "V_Iliac",
    "sternocleidomastoid": "Musc_Sclmast", "outline": "Body", "body outline": "Body",
    "patient outline": "Body", "bolus": "Bolus",
    "lung upper lobe": "Lung_{s}UL", "upper lobe": "Lung_{s}UL", "lung lower lobe": "Lung_{s}LL",
    "lower lobe": "Lung_{s}LL", "lung middle lobe": "Lung_{s}ML", "middle lobe": "Lung_{s}ML",
}  # fmt: skip


def _propose_target(tokens: list[str]) -> str | None:
    first, rest = tokens[0], tokens[1:]
    if first == "i" and rest[:1] in (["gtv"], ["ctv"]):
        first, rest = "i" + rest[0], rest[1:]
    if first in _TUMOUR_WORDS:
        kind = "GTV"  # primary or nodal is not known from "tumour"
    elif first in _TARGET_TYPES:
        kind = _TARGET_TYPES[first]
    else:
        return None
    classifier = number = dose = ""
    while rest:
        token = rest.pop(0)
        if token in _CLASSIFIERS and not (classifier or number or dose):
            classifier = _CLASSIFIERS[token]
        elif token.isdigit() and rest[:1] == ["gy"] and not dose:
            dose, rest = f"{token}Gy", rest[1:]
        elif token.isdigit() and len(token) <= 2 and not (number or dose):
            number = str(int(token))
        elif token.isdigit() and not dose:
            dose = token  # cGy, TG-263's preferred unit
        elif token in ("high", "low", "mid") and not dose:
            dose = token.capitalize()
        else:
            return None
    return f"{kind}{classifier}{number}" + (f"_{dose}" if dose else "")


def _sides(tokens: list[str]) -> set[str]:
    """The sides (``"L"``, ``"R"``) that a name's laterality tokens name."""
    return {_LATERALITY[t] for t in tokens if t in _LATERALITY}


def _propose_anatomic(tokens: list[str]) -> str | None:
    joined = " ".join(tokens)
    vertebra = re.fullmatch(r"(?:vertebra|vertebrae|vb) ([ctls]) ?([0-9]{1,2})", joined)
    if vertebra:
        level, number = vertebra.group(1).upper(), int(vertebra.group(2))
        return f"VB_T{number:02d}" if level == "T" else f"VB_{level}{number}"
    sides = _sides(tokens)
    if len(sides) > 1:
        return None
    side = sides.pop() if sides else ""
    phrase = " ".join(t for t in tokens if t not in _LATERALITY)
    rib = re.fullmatch(r"ribs? ([0-9]{1,2})", phrase)
    root = f"Rib{int(rib.group(1)):02d}" if rib else _SYNONYMS.get(phrase, phrase)
    if "{s}" in root:
        if not side:
            return None
        candidate = root.format(s=side)
    else:
        candidate = root + (f"_{side}" if side else "")
    return _INDEX.get(_key(candidate.replace(" ", "")), candidate)


def laterality(name: str) -> str | None:
    """``"L"`` or ``"R"`` where a structure name names one side (a laterality word: left/lt/l,
    right/rt/r, as a token: ``"Parotid_L"``, ``"lens-left"``, ``"kidney_right"``,
    ``"Lt Femur"``), else None (no side, or both).

    >>> [laterality(n) for n in ("Parotid_L", "optic_nerve_right", "Brainstem", "GTVp")]
    ['L', 'R', None, None]
    """
    sides = _sides(_tokens(name))
    return sides.pop() if len(sides) == 1 else None


@functools.lru_cache(maxsize=4096)
def propose_standard_name(name: str) -> str | None:
    """The TG-263 name for a common label name, or None when none is known.

    A name that already is standard is returned unchanged. Otherwise the tokens are read as a
    target (``"gtv-primary"`` -> ``GTVp``, ``"PTV5400"`` -> ``PTV_5400``, ``"Tumour"`` ->
    ``GTV``), a PRV (``"Spinal cord PRV 5"`` -> ``SpinalCord_PRV05``) or anatomy: laterality
    words (left/lt/l, right/rt/r) become ``_L``/``_R``, :data:`_SYNONYMS` maps common words to
    TG-263 roots, and the result is matched to the table ignoring case and underscores.

    >>> [propose_standard_name(n) for n in ("Parotid-Lt", "optic_nerve_right", "femur_left")]
    ['Parotid_L', 'OpticNrv_R', 'Femur_L']
    """
    if is_standard_name(name):
        return name
    tokens = _tokens(name)
    if not tokens or tokens[0] == "z" or "minus" in tokens:
        return None  # optimisation and derived structures have no standard name to propose
    candidate = _propose_target(tokens)
    if candidate is None and "prv" in tokens:
        at = tokens.index("prv")
        margin = tokens[at + 1] if at + 1 < len(tokens) and tokens[at + 1].isdigit() else ""
        rest = [t for i, t in enumerate(tokens) if i != at and not (margin and i == at + 1)]
        base = _propose_anatomic([t for t in rest if t != "mm"]) or ""
        suffix = f"_PRV{int(margin):02d}" if margin else "_PRV"
        lateral = base.endswith(("_L", "_R"))
        candidate = base[:-2] + suffix + base[-2:] if lateral else base + suffix
    elif candidate is None:
        candidate = _propose_anatomic(tokens)
    return candidate if candidate is not None and is_standard_name(candidate) else None


# --- DICOM SEG codes ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConceptCode:
    """One coded concept, as in pydicom's ``codedict`` (``keyword`` is its attribute name).

    Attributes:
        value: Code Value, e.g. ``"45289007"``.
        scheme_designator: ``"SCT"`` (SNOMED CT) or ``"DCM"`` (DICOM).
        meaning: Code Meaning exactly as pydicom spells it.
        keyword: pydicom attribute, e.g. ``codes.SCT.ParotidGland``.
    """

    value: str
    scheme_designator: str
    meaning: str
    keyword: str


@dataclass(frozen=True, slots=True)
class SegmentCodes:
    """Segmented Property Category (CID 7150), Type (CID 7151) and optional Type Modifier.

    Attributes:
        category: e.g. Anatomical Structure.
        type: e.g. Parotid gland.
        type_modifier: laterality (CID 244: Left, Right, Bilateral) or None.
    """

    category: ConceptCode
    type: ConceptCode
    type_modifier: ConceptCode | None = None


def _sct(keyword: str, value: str, meaning: str) -> ConceptCode:
    return ConceptCode(value, "SCT", meaning, keyword)


def _dcm(keyword: str, value: str, meaning: str) -> ConceptCode:
    return ConceptCode(value, "DCM", meaning, keyword)


_ANATOMICAL = _sct("AnatomicalStructure", "91723000", "Anatomical Structure")  # CID 7150
_SPATIAL = _sct("SpatialAndRelationalConcept", "309825002", "Spatial and Relational Concept")
_OBJECT = _sct("PhysicalObject", "260787004", "Physical object")
_ORGAN = SegmentCodes(_ANATOMICAL, _sct("Organ", "91772007", "Organ"))  # the fallback
_SIDES = {
    "L": _sct("Left", "7771000", "Left"), "R": _sct("Right", "24028007", "Right"),
    "B": _sct("Bilateral", "51440002", "Bilateral"),
}  # fmt: skip

#: Codes per interpreted type. Targets as io/seg.py writes them; the rest are CID 7151 (or
#: CID 9534 / 9520 RT) concepts. FIXATION, AVOIDANCE, REGISTRATION, ISOCENTER, DOSE_REGION and
#: CONTROL have no fitting concept in pydicom's codedict and get the Organ fallback.
_TYPE_CODES: dict[str, SegmentCodes] = {
    "GTV": SegmentCodes(
        _sct("MorphologicallyAbnormalStructure", "49755003", "Morphologically Abnormal Structure"),
        _sct("Neoplasm", "108369006", "Neoplasm"),
    ),
    "CTV": SegmentCodes(_SPATIAL, _sct(
        "ClinicalTargetVolume", "228792002", "Clinical target volume (observable entity)")),
    "PTV": SegmentCodes(_SPATIAL, _sct(
        "PlanningTargetVolume", "228793007", "Planning target volume (observable entity)")),
    "IRRAD_VOLUME": SegmentCodes(_SPATIAL, _sct(
        "IrradiatedVolume", "228790005", "Irradiated Volume")),
    "TREATED_VOLUME": SegmentCodes(_SPATIAL, _dcm("TreatedVolume", "130059", "Treated Volume")),
    "EXTERNAL": SegmentCodes(_ANATOMICAL, _sct("EntireBody", "38266002", "Entire body")),
    "CAVITY": SegmentCodes(_ANATOMICAL, _sct("BodyCavity", "91806002", "Body cavity")),
    "BOLUS": SegmentCodes(_OBJECT, _sct("SurfaceBolus", "228736002", "Surface Bolus")),
    "MARKER": SegmentCodes(_OBJECT, _sct("OpaqueMarker", "262301009", "Opaque Marker")),
    "SUPPORT": SegmentCodes(_OBJECT, _sct("Table", "86407004", "Table")),
    "DOSE_MEASUREMENT": SegmentCodes(_OBJECT, _sct("Dosimeter", "15869005", "Dosimeter")),
    "CONTRAST_AGENT": SegmentCodes(
        _sct("Substance", "105590001", "Substance"),
        _sct("ContrastAgent", "7140000", "Contrast agent"),
    ),
    "BRACHY_CHANNEL": SegmentCodes(_OBJECT, _dcm(
        "BrachytherapyChannel", "130080", "Brachytherapy channel")),
    "BRACHY_SRC_APP": SegmentCodes(_OBJECT, _dcm(
        "BrachytherapySourceApplicator", "130078", "Brachytherapy source applicator")),
    "BRACHY_CHNL_SHLD": SegmentCodes(_OBJECT, _dcm(
        "BrachytherapyChannelShield", "130079", "Brachytherapy channel shield")),
    "BRACHY_ACCESSORY": SegmentCodes(_OBJECT, _sct(
        "BrachytherapyDevice", "228748004", "Brachytherapy Device")),
}  # fmt: skip

#: TG-263 root (laterality suffix removed) -> SNOMED CT anatomical structure, as in pydicom's
#: codedict. Cochlea: the codedict has no cochlea concept; Inner ear is the nearest structure
#: that contains it. Lobes keep their side as a modifier (Lung_RML's concept names it).
_ORGAN_CODES: dict[str, ConceptCode] = {
    "Parotid": _sct("ParotidGland", "45289007", "Parotid gland"),
    "Glnd_Submand": _sct("SubmandibularGland", "54019009", "Submandibular gland"),
    "Glnd_Lacrimal": _sct("LacrimalGland", "13561001", "Lacrimal gland"),
    "Glnd_Thyroid": _sct("Thyroid", "69748006", "Thyroid"),
    "Glnd_Adrenal": _sct("AdrenalGland", "23451007", "Adrenal gland"),
    "Glnd_Thymus": _sct("Thymus", "9875009", "Thymus"),
    "Pituitary": _sct("Pituitary", "56329008", "Pituitary"),
    "Brain": _sct("Brain", "12738006", "Brain"),
    "Brainstem": _sct("BrainStem", "119238007", "Brain Stem"),
    "Cerebellum": _sct("Cerebellum", "113305005", "Cerebellum"),
    "Hippocampus": _sct("Hippocampus", "5366008", "Hippocampus"),
    "SpinalCord": _sct("SpinalCord", "2748008", "Spinal cord"),
    "SpinalCanal": _sct("VertebralCanal", "61853006", "Vertebral canal"),
    "BrachialPlex": _sct("BrachialPlexus", "36582005", "Brachial plexus"),
    "OpticChiasm": _sct("OpticChiasm", "244453006", "Optic chiasm"),
    "OpticNrv": _sct("OpticNerve", "18234004", "optic nerve"),
    "Eye": _sct("Eye", "81745001", "Eye"),
    "Lens": _sct("Lens", "78076003", "Lens"),
    "Orbit": _sct("OrbitalStructure", "363654007", "Orbital structure"),
    "Cornea": _sct("Cornea", "28726007", "Cornea"),
    "Retina": _sct("Retina", "5665001", "Retina"),
    "Cochlea": _sct("InnerEar", "22945000", "Inner ear"),
    "Ear_Internal": _sct("InnerEar", "22945000", "Inner ear"),
    "Ear_Middle": _sct("MiddleEar", "25342003", "Middle ear"),
    "Bone_Mandible": _sct("Mandible", "91609006", "Mandible"),
    "Bone_Hyoid": _sct("HyoidBone", "21387005", "Hyoid bone"),
    "Cavity_Oral": _sct("OralCavity", "74262004", "oral cavity"),
    "Cavity_Nasal": _sct("NasalCavity", "279549004", "nasal cavity"),
    "Tongue": _sct("Tongue", "21974007", "Tongue"),
    "Palate_Soft": _sct("SoftPalate", "49460000", "Soft palate"),
    "Lips": _sct("Lip", "48477009", "Lip"),
    "Pharynx": _sct("Pharynx", "54066008", "Pharynx"),
    "Nasopharynx": _sct("Nasopharynx", "360955006", "Nasopharynx"),
    "Oropharynx": _sct("Oropharynx", "31389004", "oropharynx"),
    "Laryngl_Pharynx": _sct("Hypopharynx", "81502006", "Hypopharynx"),
    "Larynx": _sct("Larynx", "4596009", "Larynx"),
    "Glottis": _sct("Glottis", "1307006", "glottis"),
    "Trachea": _sct("Trachea", "44567001", "Trachea"),
    "Esophagus": _sct("Esophagus", "32849002", "Esophagus"),
    "Lung": _sct("Lung", "39607008", "Lung"),
    "Lung_LUL": _sct("UpperLobeOfLung", "45653009", "Upper lobe of lung"),
    "Lung_LLL": _sct("LowerLobeOfLung", "90572001", "Lower lobe of lung"),
    "Lung_RUL": _sct("UpperLobeOfLung", "45653009", "Upper lobe of lung"),
    "Lung_RML": _sct("MiddleLobeOfRightLung", "72481006", "Middle lobe of right lung"),
    "Lung_RLL": _sct("LowerLobeOfLung", "90572001", "Lower lobe of lung"),
    "Heart": _sct("Heart", "80891009", "Heart"),
    "Pericardium": _sct("Pericardium", "76848001", "Pericardium"),
    "Mediastinum": _sct("Mediastinum", "72410000", "Mediastinum"),
    "Diaphragm": _sct("Diaphragm", "5798000", "Diaphragm"),
    "A_Aorta": _sct("Aorta", "15825003", "Aorta"),
    "A_Pulmonary": _sct("PulmonaryArtery", "81040000", "Pulmonary artery"),
    "V_Pulmonary": _sct("PulmonaryVein", "122972007", "Pulmonary vein"),
    "A_Carotid": _sct("CommonCarotidArtery", "32062004", "Common carotid artery"),
    "A_Subclavian": _sct("SubclavianArtery", "36765005", "Subclavian artery"),
    "A_Brachiocephls": _sct("BrachiocephalicTrunk", "12691009", "brachiocephalic trunk"),
    "V_Brachioceph": _sct("BrachiocephalicVein", "8887007", "Brachiocephalic vein"),
    "V_Venacava_S": _sct("SuperiorVenaCava", "48345005", "Superior vena cava"),
    "V_Venacava_I": _sct("InferiorVenaCava", "64131007", "Inferior vena cava"),
    "V_Jugular_Int": _sct("InternalJugularVein", "12123001", "Internal jugular vein"),
    "V_Portal": _sct("PortalVein", "32764006", "Portal vein"),
    "A_Iliac": _sct("CommonIliacArtery", "73634005", "Common iliac artery"),
    "V_Iliac": _sct("CommonIliacVein", "46027005", "Common iliac vein"),
    "Liver": _sct("Liver", "10200004", "Liver"),
    "Spleen": _sct("Spleen", "78961009", "Spleen"),
    "Stomach": _sct("Stomach", "69695003", "Stomach"),
    "Pancreas": _sct("Pancreas", "15776009", "Pancreas"),
    "Gallbladder": _sct("Gallbladder", "28231008", "Gallbladder"),
    "Duodenum": _sct("Duodenum", "38848004", "Duodenum"),
    "Bowel_Small": _sct("SmallIntestine", "30315005", "Small intestine"),
    "Bowel_Large": _sct("LargeIntestine", "14742008", "Large intestine"),
    "Colon": _sct("Colon", "71854001", "Colon"),
    "Rectum": _sct("Rectum", "34402009", "Rectum"),
    "Anus": _sct("Anus", "53505006", "Anus"),
    "Kidney": _sct("Kidney", "64033007", "Kidney"),
    "Ureter": _sct("Ureter", "87953007", "Ureter"),
    "Bladder": _sct("Bladder", "89837001", "Bladder"),
    "Urethra": _sct("Urethra", "13648007", "Urethra"),
    "Prostate": _sct("Prostate", "41216001", "Prostate"),
    "SeminalVes": _sct("SeminalVesicle", "64739004", "Seminal Vesicle"),
    "Penis": _sct("Penis", "18911002", "Penis"),
    "Testis": _sct("Testis", "40689003", "Testis"),
    "Uterus": _sct("Uterus", "35039007", "Uterus"),
    "Cervix": _sct("Cervix", "71252005", "Cervix"),
    "Ovary": _sct("Ovary", "15497006", "Ovary"),
    "Breast": _sct("Breast", "76752008", "Breast"),
    "Femur": _sct("Femur", "71341001", "Femur"),
    "Femur_Head": _sct("FemoralHead", "2812003", "Femoral head"),
    "Humerus": _sct("Humerus", "85050009", "Humerus"),
    "Scapula": _sct("Scapula", "79601000", "Scapula"),
    "Clavicle": _sct("Clavicle", "51299004", "Clavicle"),
    "Sacrum": _sct("Sacrum", "54735007", "Sacrum"),
    "Skull": _sct("Skull", "89546000", "Skull"),
    "Bone_Ilium": _sct("Ilium", "22356005", "Ilium"),
    "Rib": _sct("Rib", "113197003", "Rib"),
    "VB": _sct("Vertebra", "51282000", "Vertebra"),
    "Musc_Sclmast": _sct("SternocleidomastoidMuscle", "22823000", "Sternocleidomastoid muscle"),
    "Body": _sct("EntireBody", "38266002", "Entire body"),
    "External": _sct("EntireBody", "38266002", "Entire body"),
    "Skin": _sct("Skin", "39937001", "Skin"),
}
#: TG-263 compound (plural) names of paired organs -> their singular root, modifier Bilateral.
_PAIRS = {
    "Parotids": "Parotid", "Glnd_Submands": "Glnd_Submand", "Hippocampi": "Hippocampus",
    "Eyes": "Eye", "Lungs": "Lung", "Kidneys": "Kidney", "Femurs": "Femur",
}  # fmt: skip


def _organ_codes(standard_name: str) -> SegmentCodes | None:
    name = standard_name.split("^", 1)[0].replace("~", "")
    side = ""
    if name in _PAIRS:
        name, side = _PAIRS[name], "B"
    elif name.startswith("Lung_") and name in _ORGAN_CODES:
        side = "" if name == "Lung_RML" else name[5]
    elif name.endswith(("_L", "_R")):
        name, side = name[:-2], name[-1]
    if re.fullmatch(r"Rib[0-9]{2}", name):
        name = "Rib"
    elif name.startswith("VB_") or name == "VBs":
        name = "VB"
    code = _ORGAN_CODES.get(name)
    if code is None:
        return None
    return SegmentCodes(_ANATOMICAL, code, _SIDES[side] if side else None)


def segment_codes(
    name: str, interpreted_type: str, standard_name: str | None = None
) -> SegmentCodes:
    """Segmented Property Category / Type (and laterality modifier) for one structure.

    Organs (ORGAN, OAR, CAVITY) are coded by their TG-263 name (``standard_name``, else
    :func:`propose_standard_name` of ``name``) when :data:`_ORGAN_CODES` knows it; other types
    by :data:`_TYPE_CODES`; anything else is Anatomical Structure / Organ.

    Args:
        name: the structure name.
        interpreted_type: one of :data:`INTERPRETED_TYPES`.
        standard_name: its TG-263 name, if known.

    Returns:
        The codes; every one is a pydicom ``codedict`` concept.

    Raises:
        InputError: ``interpreted_type`` is not a DICOM defined term.

    >>> codes = segment_codes("Parotid L", "ORGAN")
    >>> codes.type.meaning, codes.type_modifier.meaning
    ('Parotid gland', 'Left')
    """
    if interpreted_type not in INTERPRETED_TYPES:
        raise InputError(
            f"interpreted_type must be one of DICOM's RT ROI Interpreted Types "
            f"{', '.join(INTERPRETED_TYPES)}; got {interpreted_type!r} for structure {name!r}"
        )
    if interpreted_type in ("ORGAN", "OAR", "CAVITY"):
        standard = standard_name if standard_name is not None else propose_standard_name(name)
        organ = _organ_codes(standard) if standard is not None else None
        if organ is not None:
            return organ
    return _TYPE_CODES.get(interpreted_type, _ORGAN)
