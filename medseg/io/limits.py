"""Resource limits: the size an image declares is checked before anything is allocated for it.

A header can declare any size (65535 x 65535 pixels, 2**31 frames, a NIfTI ``dim`` of 32767
per axis) in a file of a few hundred bytes. Every loader calls :func:`require_within_limits`
with the declared shape once it is known from the header and before it reads or decodes a
pixel, so such a file costs a :class:`~medseg.errors.ResourceLimitError` instead of the
machine's memory. The limits are ``IngestConfig.max_voxels`` and ``IngestConfig.max_bytes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from medseg.config import IngestConfig
from medseg.errors import ResourceLimitError

__all__ = ["require_within_limits"]


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.3g} GiB"


def require_within_limits(
    where: object, shape: Sequence[int], bytes_per_voxel: int, ingest: IngestConfig | None = None
) -> None:
    """Refuse an image whose declared size is over the configured maximum.

    Args:
        where: the file or folder, named first in the message.
        shape: the declared array shape (any number of axes, each >= 0).
        bytes_per_voxel: bytes of one voxel in the largest array the loader allocates.
        ingest: the limits (default: ``IngestConfig()``).

    Raises:
        ResourceLimitError: more than ``ingest.max_voxels`` voxels or ``ingest.max_bytes``
            bytes; the message gives the shape, the size asked for and the limit.

    Example:
        >>> require_within_limits("ct/", (300, 512, 512), 2)
        >>> require_within_limits("x.dcm", (65535, 65535), 2)
        Traceback (most recent call last):
        ...
        medseg.errors.ResourceLimitError: x.dcm: declared image 65535 x 65535 = 4294836225 voxels is over the limit of 2147483648 voxels (ingest.max_voxels)
    """
    ingest = ingest or IngestConfig()
    dims = [int(n) for n in shape]
    voxels = math.prod(dims)  # Python ints: no overflow for absurd declared sizes
    size = " x ".join(str(n) for n in dims)
    if voxels > ingest.max_voxels:
        raise ResourceLimitError(
            f"{where}: declared image {size} = {voxels} voxels is over the limit of "
            f"{ingest.max_voxels} voxels (ingest.max_voxels)"
        )
    n_bytes = voxels * int(bytes_per_voxel)
    if n_bytes > ingest.max_bytes:
        raise ResourceLimitError(
            f"{where}: declared image {size} at {bytes_per_voxel} bytes per voxel needs "
            f"{n_bytes} bytes ({_gib(n_bytes)}), over the limit of {ingest.max_bytes} bytes "
            f"({_gib(ingest.max_bytes)}, ingest.max_bytes)"
        )
