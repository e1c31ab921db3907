"""RT Structure Set -> one label map: choose ROIs by name and give each a label value.

The one place where ROI names become label values, for the two readers that need it:
training on CT + RT-STRUCT patient folders (``medseg.training.datasets``: label ``v`` is every
ROI matching one of its glob patterns) and evaluating RT-STRUCTs (``medseg.evaluation``: label
``v`` is the ROI named like its structure).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from medseg.errors import InputError
from medseg.io.rtstruct._read import read
from medseg.volume import SourceInfo, Volume, VolumeKind

__all__ = ["match_rois", "read_label_map", "roi_name_key"]

#: What :func:`roi_name_key` drops: white space, hyphens and underscores.
_SEPARATORS = re.compile(r"[\s_-]+")


def match_rois(roi_names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The ROI names matching any pattern: case-insensitive shell globs, spaces trimmed.

    Example:
        >>> match_rois(["GTV-1", "gtv_primary", "CTV", "Spinal Cord"], ["GTV", "GTV*"])
        ['GTV-1', 'gtv_primary']
    """
    folded = [p.strip().casefold() for p in patterns]
    return [
        name
        for name in roi_names
        if any(fnmatch.fnmatchcase(name.strip().casefold(), p) for p in folded)
    ]


def roi_name_key(name: str) -> str:
    """What two names must share to name one structure: case-insensitive, without spaces,
    hyphens and underscores.

    Example:
        >>> roi_name_key("Spinal-Cord") == roi_name_key("spinal_cord") == roi_name_key("SpinalCord")
        True
    """
    return _SEPARATORS.sub("", name).casefold()


def _matching_names(
    roi_names: Sequence[str], wanted: Sequence[str], match: str, where: Path, value: int
) -> list[str]:
    if match == "pattern":
        return match_rois(roi_names, wanted)
    keys = {roi_name_key(w) for w in wanted}
    found = [name for name in roi_names if roi_name_key(name) in keys]
    if len(found) > 1:
        raise InputError(
            f"{where}: ROIs {found} all match label {value} {list(wanted)} (names are compared "
            "ignoring case, spaces, '-' and '_'); keep one of them"
        )
    return found


def read_label_map(
    rtstruct_files: Sequence[Path],
    image: Volume,
    rois: Mapping[int, Sequence[str]],
    *,
    match: Literal["pattern", "name"] = "pattern",
    missing: Literal["error", "empty"] = "error",
    where: Path | None = None,
) -> Volume:
    """Rasterise RT Structure Sets onto ``image`` and combine chosen ROIs into one label map.

    Every ROI of every file is rasterised by :func:`read` (same placement, checks and errors).
    Label ``v`` is the union of the ROIs chosen for ``rois[v]``; where labels overlap the
    higher value wins.

    Args:
        rtstruct_files: RT-STRUCT files drawn on ``image`` (at least one; with several, a ROI
            name repeated in a later file replaces the earlier one).
        image: the image series the structures were drawn on (array order
            ``(slice, row, column)``).
        rois: label value (1..) -> the ROI names it takes.
        match: ``"pattern"``: the names are case-insensitive shell globs
            (:func:`match_rois`), and every matching ROI is taken; ``"name"``: a ROI is taken
            when its name equals one of them ignoring case, spaces, ``-`` and ``_``
            (:func:`roi_name_key`), and two ROIs matching one label are an error.
        missing: a label that no ROI matches is an error (``"error"``) or stays empty
            (``"empty"``).
        where: what messages and the label map's source name (default: the RT-STRUCT file,
            or the folder holding them all).

    Returns:
        A LABELS volume on ``image``'s grid (uint8, or uint16 for values over 255), with the
        image's series and frame-of-reference UIDs.

    Raises:
        InputError: no files, a label no ROI matches (``missing="error"``), or two ROIs
            matching one label (``match="name"``).
        UnreadableScanError, MissingReferenceError, GeometryError: from :func:`read`.
    """
    files = [Path(f) for f in rtstruct_files]
    if not files:
        raise InputError(f"{where or image.source.describe()}: no RT-STRUCT file to read")
    if where is None:
        where = files[0] if len(files) == 1 else Path(os.path.commonpath(files))
    masks: dict[str, Volume] = {}
    for path in files:
        masks.update(read(path, image))
    dtype = np.uint8 if max(rois, default=0) <= np.iinfo(np.uint8).max else np.uint16
    label_array = np.zeros(image.geometry.shape, dtype=dtype)
    for value in sorted(rois):
        names = _matching_names(list(masks), rois[value], match, where, value)
        if not names and missing == "error":
            raise InputError(
                f"{where}: no ROI matches label {value} {list(rois[value])} (ROIs: {sorted(masks)})"
            )
        for name in names:
            label_array[np.asarray(masks[name].array) > 0] = value
    source = SourceInfo(
        path=where,
        series_instance_uid=image.source.series_instance_uid,
        frame_of_reference_uid=image.source.frame_of_reference_uid,
        modality=image.source.modality,
    )
    return Volume(label_array, image.geometry, VolumeKind.LABELS, source)
