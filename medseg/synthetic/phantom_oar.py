"""CT-like images made from expert organ label maps: a multi-organ phantom on real anatomy.

Label-only datasets (DeepMind's head-and-neck organs at risk: 21 organs from 0.05 mL cochleae
to litre-sized lungs, contoured on CT scans that are not distributed) carry the CT grid but no
image. :func:`ct_from_label_maps` paints an image on exactly that grid, so that a segmentation
model can be trained and evaluated on real organ shapes, sizes, positions and class imbalance.

How the image is made, in this order:

1. **Label map.** The binary organ maps are merged into one label map with values
   ``1..len(class_names)``; where organs overlap (the lens inside the globe, the spinal cord
   inside the spinal canal) the organ with fewer voxels wins, so nested organs stay visible.
2. **Body outline.** The convex hull of the organ voxels of every slice (array axis 0),
   tapering off into the slices next to it (by ``_BODY_TAPER`` mm in-plane per mm along axis
   0, so a dome rises above the brain), grown by ``body_margin_mm`` and smoothed. Where few
   organs are labelled (mid-neck holds only the spinal canal) the outline stays close to
   them: the neck is thinner than a patient's. Every organ voxel is inside the body. Outside
   it is air (:data:`AIR_HU`); inside, soft tissue (:data:`SOFT_TISSUE_HU`) under a
   subcutaneous fat layer (:data:`FAT_HU`, ``_FAT_MM`` thick).
3. **Unlabelled bone and fat** that a real scan shows next to the organs, as shells of a given
   thickness around them (:data:`ORGAN_SHELLS`): the skull around the brain, vertebrae around
   the spinal canal, petrous bone around the cochleae and orbital fat around the optic nerves.
   They are background in the label map.
4. **Organ HU.** Every organ voxel gets its organ's value from :data:`HU_BY_ORGAN` (looked up
   without the side suffix, so ``Parotid-Lt`` is ``parotid``), optionally shifted per scan by
   a Gaussian of ``hu_jitter_hu`` (contrast and calibration vary between scans).
5. **Partial volume.** A Gaussian blur of ``blur_mm`` (in mm, so fewer voxels along a thick
   slice axis) mixes values across organ edges, as a scanner's point-spread function does:
   a lens is never a block of exactly 110 HU.
6. **Noise.** Gaussian noise of standard deviation ``noise_std_hu``, correlated in-plane over
   about a voxel, everywhere (air included); then rounding to int16 and clipping to
   ``[-1024, 3071]``.

Everything random comes from ``numpy.random.default_rng(seed)``: the same label maps and seed
give the same image, bit for bit. Arrays are in array order ``(slice, row, column)``; lengths
are mm, values HU. The output grid *is* the label grid (the same :class:`~medseg.Geometry`).

Example:
    >>> import numpy as np
    >>> from medseg.geometry import Geometry
    >>> grid = Geometry((12, 24, 24), (2.5, 1.0, 1.0), (0.0, 0.0, 0.0))
    >>> lens = np.zeros(grid.shape, dtype=np.uint8)
    >>> lens[5:8, 10:14, 10:14] = 1
    >>> case = ct_from_label_maps({"Lens-Lt": Volume(lens, grid, VolumeKind.LABELS)}, seed=0)
    >>> case.label_names, case.image.geometry == grid, int(case.labels.array.sum())
    ({1: 'Lens-Lt'}, True, 48)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.morphology import convex_hull_image

from medseg.errors import ConfigError, InputError
from medseg.geometry import Geometry
from medseg.io import nifti
from medseg.volume import SourceInfo, Volume, VolumeKind, require_same_geometry

__all__ = [
    "AIR_HU",
    "FAT_HU",
    "HU_BY_ORGAN",
    "ORGAN_SHELLS",
    "SOFT_TISSUE_HU",
    "LabelMapPhantom",
    "OrganShell",
    "ct_from_label_maps",
    "load_label_maps",
    "organ_hu",
    "organ_key",
]

AIR_HU = -1000.0
FAT_HU = -90.0
SOFT_TISSUE_HU = 40.0

#: Mean HU of each organ, keyed by the organ's name without its side suffix, lower case, with
#: ``-`` between words (``Optic-Nerve-Lt`` -> ``optic-nerve``). Typical values of contrast-free
#: head-and-neck CT; the cochlea is its fluid-filled spiral (dark inside the petrous bone that
#: :data:`ORGAN_SHELLS` puts around it), the orbit is the globe (vitreous), the spinal canal
#: its CSF and epidural fat around the cord.
HU_BY_ORGAN: dict[str, float] = {
    "brain": 35.0,
    "brainstem": 28.0,
    "cochlea": 20.0,
    "lacrimal": 50.0,
    "lens": 110.0,
    "lung": -820.0,
    "mandible": 800.0,
    "optic-nerve": 32.0,
    "orbit": 12.0,
    "parotid": 5.0,
    "spinal-canal": 10.0,
    "spinal-cord": 38.0,
    "submandibular": 55.0,
}


@dataclass(frozen=True, slots=True)
class OrganShell:
    """An unlabelled structure drawn as a shell around an organ.

    Attributes:
        organ: the organ's base name (a :data:`HU_BY_ORGAN` key); every side is included.
        thickness_mm: the shell holds the voxels within this distance of the organ.
        hu: the shell's value.
        what: what it stands for (for documentation).
    """

    organ: str
    thickness_mm: float
    hu: float
    what: str


#: Shells drawn before the organs (later ones over earlier ones; organs over all of them).
ORGAN_SHELLS: tuple[OrganShell, ...] = (
    OrganShell("brain", 6.0, 800.0, "skull"),
    OrganShell("spinal-canal", 8.0, 650.0, "vertebrae"),
    OrganShell("cochlea", 4.0, 1200.0, "petrous bone"),
    OrganShell("optic-nerve", 2.5, FAT_HU, "orbital fat"),
)

#: Suffixes that name a side; they are dropped before looking an organ up in the tables.
_SIDE_SUFFIX = re.compile(r"[-_ ](lt|rt|l|r|left|right)$")
#: Smoothing (mm) of the body outline.
_BODY_SMOOTH_MM = 5.0
#: In-plane spacing (mm, about) of the grid the body outline is computed on.
_BODY_GRID_MM = 2.0
#: How fast a slice's outline shrinks into slices without organs: mm in-plane per mm along
#: array axis 0 (a 45 degree slope; the top of the head is ``body_margin_mm`` above the brain).
_BODY_TAPER = 1.0
#: Slices farther than this (mm) along array axis 0 do not shape a slice's outline.
_BODY_REACH_MM = 60.0
#: Thickness (mm, in-plane) of the subcutaneous fat layer.
_FAT_MM = 5.0
#: In-plane correlation of the noise, in voxels (standard deviation of its Gaussian kernel).
_NOISE_CORRELATION_VOXELS = 0.7
#: Slices of noise drawn at once (bounds the temporaries on 400-slice grids).
_NOISE_SLAB_SLICES = 32
#: A blur reaches this many standard deviations (beyond it, it changes nothing in int16).
_BLUR_REACH_SIGMAS = 4.0
#: The range of 12-bit CT values stored as int16.
_CT_MIN_HU, _CT_MAX_HU = -1024.0, 3071.0
_LABEL_SUFFIXES = (".nrrd", ".nhdr", ".nii.gz", ".nii", ".mha", ".mhd")


@dataclass(frozen=True, slots=True)
class LabelMapPhantom:
    """A CT-like image and its label map, on the grid of the organ maps it was made from.

    Attributes:
        image: ``IMAGE`` volume, int16 HU, array order ``(slice, row, column)``.
        labels: ``LABELS`` volume, uint8, values ``0`` (background) and ``1..N``.
        label_names: label value -> organ name (``1..N``, every class, present or not), the
            form of ``ModelConfig.labels``.
        body: ``LABELS`` volume, uint8, 1 inside the body outline.
    """

    image: Volume
    labels: Volume
    label_names: dict[int, str]
    body: Volume


def organ_key(name: str) -> str:
    """``Optic-Nerve-Lt`` -> ``optic-nerve``: lower case, ``-`` between words, no side."""
    key = re.sub(r"[\s_]+", "-", name.strip().lower())
    return _SIDE_SUFFIX.sub("", key)


def organ_hu(name: str, overrides: Mapping[str, float] | None = None) -> float:
    """The HU of organ ``name``: from ``overrides`` (by full name or base name), else the table.

    Raises:
        InputError: if neither ``overrides`` nor :data:`HU_BY_ORGAN` knows the organ.
    """
    normalised = {organ_key(k): float(v) for k, v in (overrides or {}).items()}
    full = re.sub(r"[\s_]+", "-", name.strip().lower())
    for key in (full, organ_key(name)):
        if key in normalised:
            return normalised[key]
    if organ_key(name) in HU_BY_ORGAN:
        return HU_BY_ORGAN[organ_key(name)]
    raise InputError(
        f"no HU known for organ {name!r}: give it in `hu`, or use one of {sorted(HU_BY_ORGAN)}"
    )


def load_label_maps(folder: Path) -> dict[str, Volume]:
    """The organ label maps of a folder: one NRRD/NIfTI/MetaImage file per organ.

    The organ's name is the file name without its suffix (``Parotid-Lt.nrrd`` -> ``Parotid-Lt``).

    Raises:
        UnreadableScanError: a file cannot be read.
        InputError: no label map in ``folder``.
    """
    folder = Path(folder)
    maps: dict[str, Volume] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        name = path.name
        suffix = next((s for s in _LABEL_SUFFIXES if name.lower().endswith(s)), None)
        if suffix is not None and path.is_file():
            maps[name[: -len(suffix)]] = nifti.load(path, VolumeKind.LABELS)
    if not maps:
        raise InputError(f"{folder}: no label maps ({', '.join(_LABEL_SUFFIXES)} files)")
    return maps


def ct_from_label_maps(
    label_maps: Mapping[str, Volume] | Path | str,
    *,
    seed: int,
    class_names: Sequence[str] | None = None,
    hu: Mapping[str, float] | None = None,
    noise_std_hu: float = 15.0,
    blur_mm: float = 1.0,
    hu_jitter_hu: float = 0.0,
    body_margin_mm: float = 15.0,
) -> LabelMapPhantom:
    """A CT-like image on the grid of binary organ label maps (see the module docstring).

    Args:
        label_maps: organ name -> binary ``LABELS`` volume (values 0 and 1), all on one grid,
            or a folder of one label-map file per organ (:func:`load_label_maps`).
        seed: seeds every random draw (HU jitter, noise).
        class_names: the organ of label value ``i + 1`` is ``class_names[i]``; names absent
            from ``label_maps`` are classes without voxels (a fixed class list over scans
            that lack some organs). ``None``: the organs of ``label_maps``, sorted.
        hu: organ HU overriding :data:`HU_BY_ORGAN`, by full name (``Lens-Lt``) or base name
            (``lens``); needed for organs the table does not know.
        noise_std_hu: standard deviation of the image noise (0: none).
        blur_mm: standard deviation of the partial-volume blur in mm (0: none).
        hu_jitter_hu: standard deviation of a per-organ, per-scan HU shift (0: none).
        body_margin_mm: in-plane margin of the body outline around the organs.

    Returns:
        The image (int16 HU), the merged label map (uint8), label names and body mask, all on
        exactly the label maps' geometry, array order ``(slice, row, column)``.

    Raises:
        InputError: no label maps, a map that is not binary, an organ that is not in
            ``class_names``, or an organ without a known HU.
        GeometryError: label maps on different grids.
        ConfigError: a negative noise, blur, jitter or margin, or duplicate
            ``class_names``.
    """
    folder: Path | None = None
    if isinstance(label_maps, (str, Path)):
        folder = Path(label_maps)
        maps = load_label_maps(folder)
    else:
        maps = dict(label_maps)
    where = "label maps" if folder is None else str(folder)
    if not maps:
        raise InputError(f"{where}: no label maps given")
    options = {
        "noise_std_hu": noise_std_hu, "blur_mm": blur_mm, "hu_jitter_hu": hu_jitter_hu,
        "body_margin_mm": body_margin_mm,
    }  # fmt: skip
    bad = {k: v for k, v in options.items() if not (math.isfinite(v) and v >= 0)}
    if bad:
        raise ConfigError(f"{where}: phantom options must be finite and >= 0, got {bad}")
    names = sorted(maps) if class_names is None else list(class_names)
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"{where}: class_names must be non-empty and unique, got {names}")
    masks = _binary_masks(maps, names, where)
    first = next(iter(maps.values()))
    grid = first.geometry
    label_names = {value: name for value, name in enumerate(names, start=1)}

    rng = np.random.default_rng(seed)
    # one draw per class, present or not, so the noise that follows depends on the seed only
    jitter = rng.normal(0.0, 1.0, len(names)) * hu_jitter_hu
    class_hu = np.zeros(len(names) + 1, dtype=np.float32)
    for value, name in label_names.items():
        class_hu[value] = organ_hu(name, hu) + jitter[value - 1]

    labels = _merge(masks, names, grid)
    union = labels > 0
    box = _box(union, grid, body_margin_mm + 3 * _BODY_SMOOTH_MM + _BLUR_REACH_SIGMAS * blur_mm)
    outline_mm = _body(union[box], grid, body_margin_mm)  # signed distance, negative inside
    body_crop = (outline_mm <= 0) | union[box]
    truth = np.full(body_crop.shape, AIR_HU, dtype=np.float32)
    truth[body_crop] = SOFT_TISSUE_HU
    truth[body_crop & (outline_mm > -_FAT_MM)] = FAT_HU
    del outline_mm
    for shell in ORGAN_SHELLS:
        organs = [masks[n][box] for n in masks if organ_key(n) == shell.organ]
        if organs:
            shell_mask = _shell(np.logical_or.reduce(organs), grid, shell.thickness_mm)
            truth[shell_mask] = shell.hu
            body_crop |= shell_mask
    label_crop = labels[box]
    truth = np.where(label_crop > 0, class_hu[label_crop], truth)
    if blur_mm > 0:
        sigma = [blur_mm / s for s in grid.spacing_mm]
        truth = ndimage.gaussian_filter(truth, sigma, mode="nearest")

    image = np.full(grid.shape, AIR_HU, dtype=np.float32)
    image[box] = truth
    if noise_std_hu > 0:
        _add_noise(image, noise_std_hu, rng)
    np.clip(np.rint(image, out=image), _CT_MIN_HU, _CT_MAX_HU, out=image)
    body = np.zeros(grid.shape, dtype=np.uint8)
    body[box] = body_crop
    source = SourceInfo(
        path=folder,
        frame_of_reference_uid=first.source.frame_of_reference_uid,
    )
    return LabelMapPhantom(
        image=Volume(image.astype(np.int16), grid, VolumeKind.IMAGE, source),
        labels=Volume(labels, grid, VolumeKind.LABELS, source),
        label_names=label_names,
        body=Volume(body, grid, VolumeKind.LABELS, source),
    )


# ---------------------------------------------------------------------------------------------
# steps


def _binary_masks(
    maps: Mapping[str, Volume], names: Sequence[str], where: str
) -> dict[str, NDArray[np.bool_]]:
    unknown = sorted(set(maps) - set(names))
    if unknown:
        raise InputError(f"{where}: organs {unknown} are not in class_names {list(names)}")
    first = next(iter(maps.values()))
    masks = {}
    for name, volume in maps.items():
        if volume.kind is not VolumeKind.LABELS:
            raise InputError(f"{volume.source.describe()}: organ {name!r} is not a label map")
        require_same_geometry(first, volume)
        array = np.asarray(volume.array)
        if array.dtype == np.bool_:
            masks[name] = array
            continue
        low = 0 if np.issubdtype(array.dtype, np.unsignedinteger) else array.min()
        if low < 0 or array.max() > 1:
            raise InputError(
                f"{volume.source.describe()}: organ {name!r} must be a binary map (0/1), got "
                f"values {array.min()}..{array.max()}"
            )
        # 0/1 bytes are valid booleans: no copy of a 100-million-voxel map
        masks[name] = array.view(np.bool_) if array.dtype == np.uint8 else array.astype(bool)
    return masks


def _merge(
    masks: Mapping[str, NDArray[np.bool_]], names: Sequence[str], grid: Geometry
) -> NDArray[np.uint8]:
    """One label map; larger organs are painted first, so the smaller wins an overlap."""
    labels = np.zeros(grid.shape, dtype=np.uint8)
    sizes = {name: int(np.count_nonzero(mask)) for name, mask in masks.items()}
    for name in sorted(masks, key=lambda n: (-sizes[n], n)):
        labels[masks[name]] = names.index(name) + 1
    return labels


def _box(mask: NDArray[np.bool_], grid: Geometry, margin_mm: float) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown by ``margin_mm``, clipped to the grid (whole grid if empty)."""
    if not mask.any():
        return (slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, grid.shape[2]))
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        margin = math.ceil(margin_mm / grid.spacing_mm[axis])
        box.append(
            slice(max(0, int(hits[0]) - margin), min(grid.shape[axis], int(hits[-1]) + 1 + margin))
        )
    return (box[0], box[1], box[2])


def _body(union: NDArray[np.bool_], grid: Geometry, margin_mm: float) -> NDArray[np.float32]:
    """Signed distance (mm, negative inside) to the body outline grown by ``margin_mm``.

    Each slice's convex hull of organ voxels is a signed distance map; a slice takes the
    smallest of its neighbours' maps, each raised by ``_BODY_TAPER`` times its distance along
    axis 0, so hulls taper off into slices without organs (a neck between mandible and lungs,
    a dome above the brain). Computed on an in-plane grid of about ``_BODY_GRID_MM``, smoothed
    and linearly interpolated back, so the outline is smooth.
    """
    step = max(1, int(_BODY_GRID_MM // min(grid.spacing_mm[1:])))
    n, rows, columns = union.shape
    padded = np.pad(union, ((0, 0), (0, -rows % step), (0, -columns % step)))
    blocks = padded.reshape(n, padded.shape[1] // step, step, padded.shape[2] // step, step)
    coarse: NDArray[np.bool_] = np.asarray(blocks.any(axis=(2, 4)))
    spacing = (grid.spacing_mm[1] * step, grid.spacing_mm[2] * step)
    far = np.float32(_BODY_REACH_MM * _BODY_TAPER + margin_mm + 1.0)
    signed = np.full(coarse.shape, far, dtype=np.float32)
    for k in np.flatnonzero(coarse.any(axis=(1, 2))):
        hull = np.zeros(coarse.shape[1:], dtype=bool)
        rows_hit, columns_hit = np.flatnonzero(coarse[k].any(1)), np.flatnonzero(coarse[k].any(0))
        inner = np.s_[rows_hit[0] : rows_hit[-1] + 1, columns_hit[0] : columns_hit[-1] + 1]
        hull[inner] = convex_hull_image(coarse[k][inner])
        hull = np.pad(hull, 1)
        outside = ndimage.distance_transform_edt(~hull, sampling=spacing)
        inside = ndimage.distance_transform_edt(hull, sampling=spacing)
        signed[k] = np.minimum(outside - inside, far)[1:-1, 1:-1]
    tapered = signed.copy()
    for offset in range(1, round(_BODY_REACH_MM / grid.spacing_mm[0]) + 1):
        rise = np.float32(_BODY_TAPER * offset * grid.spacing_mm[0])
        np.minimum(tapered[offset:], signed[:-offset] + rise, out=tapered[offset:])
        np.minimum(tapered[:-offset], signed[offset:] + rise, out=tapered[:-offset])
    sigma = (
        _BODY_SMOOTH_MM / grid.spacing_mm[0],
        _BODY_SMOOTH_MM / spacing[0],
        _BODY_SMOOTH_MM / spacing[1],
    )
    smooth = ndimage.gaussian_filter(tapered, sigma, mode="nearest")
    fine = ndimage.zoom(smooth, (1, step, step), order=1, mode="nearest", grid_mode=True)
    return fine[:, :rows, :columns] - np.float32(margin_mm)


def _shell(organ: NDArray[np.bool_], grid: Geometry, thickness_mm: float) -> NDArray[np.bool_]:
    """Voxels outside ``organ`` within ``thickness_mm`` of it (computed in its bounding box)."""
    shell = np.zeros_like(organ)
    if not organ.any():
        return shell
    box = _box(organ, grid, thickness_mm)
    distance = ndimage.distance_transform_edt(~organ[box], sampling=grid.spacing_mm)
    shell[box] = (distance > 0) & (distance <= thickness_mm)
    return shell


def _add_noise(image: NDArray[np.float32], std_hu: float, rng: np.random.Generator) -> None:
    """Add in-plane correlated Gaussian noise of standard deviation ``std_hu``, slab by slab."""
    sigma = (0.0, _NOISE_CORRELATION_VOXELS, _NOISE_CORRELATION_VOXELS)
    # the blur lowers the noise's standard deviation by the kernel's L2 norm: undo that
    delta = np.zeros((1, 15, 15), dtype=np.float64)
    delta[0, 7, 7] = 1.0
    norm = float(np.sqrt(np.sum(ndimage.gaussian_filter(delta, sigma) ** 2)))
    for first in range(0, image.shape[0], _NOISE_SLAB_SLICES):
        slab = image[first : first + _NOISE_SLAB_SLICES]
        noise = rng.standard_normal(slab.shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, sigma, mode="wrap")
        slab += noise * np.float32(std_hu / norm)
