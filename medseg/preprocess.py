"""Intensity preprocessing of image volumes (numpy only; no geometry changes)."""

from __future__ import annotations

import numpy as np

from medseg.config import PreprocessConfig
from medseg.errors import InputError
from medseg.volume import Volume, VolumeKind

__all__ = ["scale_intensity"]


def scale_intensity(image: Volume, config: PreprocessConfig) -> Volume:
    """Map a CT window linearly onto ``[0, 1]`` and clip.

    ``config.lower_hu`` becomes 0 and ``config.upper_hu`` becomes 1; values outside the window
    are clipped. Geometry, source and axis order ``(slice, row, column)`` are unchanged.

    Args:
        image: an ``IMAGE`` volume in Hounsfield units, array order ``(slice, row, column)``.
        config: the intensity window.

    Returns:
        An ``IMAGE`` volume of dimensionless float32 intensities in ``[0, 1]`` on the same grid.

    Raises:
        InputError: if ``image`` is not an ``IMAGE`` volume or contains NaN/inf.

    Example:
        >>> import numpy as np
        >>> from medseg.config import PreprocessConfig
        >>> from medseg.geometry import Geometry
        >>> grid = Geometry((1, 1, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        >>> ct = Volume(np.array([[[-1000.0, 0.0, 50.0, 400.0]]]), grid)
        >>> scale_intensity(ct, PreprocessConfig(lower_hu=-50.0, upper_hu=150.0)).array.tolist()
        [[[0.0, 0.25, 0.5, 1.0]]]
    """
    if image.kind is not VolumeKind.IMAGE:
        raise InputError(
            f"{image.source.describe()}: intensity scaling needs an image volume, "
            f"got {image.kind.value}"
        )
    hu = np.asarray(image.array, dtype=np.float32)
    if not np.all(np.isfinite(hu)):
        raise InputError(f"{image.source.describe()}: image contains NaN or infinite values")
    width_hu = np.float32(config.upper_hu - config.lower_hu)
    scaled = np.clip((hu - np.float32(config.lower_hu)) / width_hu, 0.0, 1.0).astype(np.float32)
    return image.with_array(scaled)
