"""DICOM RT Structure Sets: read contours back into masks, write masks as contours.

- :func:`read` rasterises every ROI of an RT-STRUCT onto a reference image's grid (labels for
  training, and the referee of every export); :func:`read_contours` gives the polygons and
  ROI attributes themselves; :func:`read_roi_names` lists the ROIs and
  :func:`referenced_series_uids` the series they were drawn on, without an image.
- :func:`read_label_map` turns chosen ROIs into one label map (by glob pattern, as training
  does, or by structure name, as evaluation does; :func:`match_rois`, :func:`roi_name_key`).
- :func:`write` / :func:`write_masks` write a label map or per-structure masks as an RT-STRUCT
  that references the image's slices, which every common reader (plastimatch, rt-utils,
  platipy, dicompyler-core, dcmjs) rasterises back to the same voxels.

The modules behind this package (``_read``, ``_labels``, ``_write``) are private; import from
``medseg.io.rtstruct``.
"""

from __future__ import annotations

from medseg.io.rtstruct._labels import match_rois, read_label_map, roi_name_key
from medseg.io.rtstruct._read import (
    MAX_LISTED,
    MAX_OFF_PLANE_SLICES,
    RoiContours,
    StructureSetContours,
    read,
    read_contours,
    read_roi_names,
    referenced_series_uids,
)
from medseg.io.rtstruct._write import (
    INTERPRETED_TYPES,
    MAX_CONTOUR_DATA_BYTES,
    PROBABILITY_SEARCH_VOXELS,
    MissingUids,
    RoiSpec,
    duplicated_roi_fields,
    write,
    write_masks,
)

__all__ = [
    "INTERPRETED_TYPES",
    "MAX_CONTOUR_DATA_BYTES",
    "MAX_LISTED",
    "MAX_OFF_PLANE_SLICES",
    "PROBABILITY_SEARCH_VOXELS",
    "MissingUids",
    "RoiContours",
    "RoiSpec",
    "StructureSetContours",
    "duplicated_roi_fields",
    "match_rois",
    "read",
    "read_contours",
    "read_label_map",
    "read_roi_names",
    "referenced_series_uids",
    "roi_name_key",
    "write",
    "write_masks",
]
