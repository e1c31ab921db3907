"""Resource limits: what a file declares is checked before anything is allocated for it, and
what a compressed file inflates to is bounded while it is inflated.

A header can declare any size (65535 x 65535 pixels, 2**31 frames, a NIfTI ``dim`` of 32767
per axis) in a file of a few hundred bytes. Every loader calls :func:`require_within_limits`
with the declared shape once it is known from the header and before it reads or decodes a
pixel, so such a file costs a :class:`~medseg.errors.ResourceLimitError` instead of the
machine's memory. The limits are ``IngestConfig.max_voxels`` and ``IngestConfig.max_bytes``.

Their defaults, 2**29 voxels (2048 x 512 x 512) and 4 GiB (that many voxels as float64), are
fixed numbers rather than a share of the machine's memory, so a config loads the same scans
on every machine. They admit every real CT (a whole-body CT at 0.5 mm slices is about
2000 x 512 x 512 = 5.2e8 voxels, 4.2 GB as the float64 of a scaled NIfTI) and fit a 24 GiB,
2-core machine: ``medseg predict`` measured about 15 bytes per voxel beyond the process for
a DICOM CT (8 GiB at the limit), and a scaled NIfTI's float64 adds 6 more (11 GiB,
estimated). A 1e9-voxel header is refused at once (the rationale is in ``IngestConfig``).

A compressed file is a second way to ask for memory: 1 MB of gzip or deflate inflates to
1 GB of zeros. :class:`InflatedReader` is the one way medseg reads compressed input (gzip
NIfTI, deflated DICOM): it inflates in chunks of at most :data:`INFLATE_CHUNK_BYTES` as the
bytes are read (``zlib.decompressobj`` with ``max_length``), skips without keeping what a
seek passes over, and stops with a ResourceLimitError at the bound its owner sets (the size
the header declares, or a fixed bound for headers).
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, Self

from medseg.config import IngestConfig
from medseg.errors import ResourceLimitError, UnreadableScanError

__all__ = [
    "GZIP_WBITS",
    "INFLATE_CHUNK_BYTES",
    "RAW_DEFLATE_WBITS",
    "InflatedReader",
    "require_within_limits",
]

#: The most bytes one call to zlib inflates (its ``max_length``), and the compressed bytes
#: read from the file at a time.
INFLATE_CHUNK_BYTES = 1 << 20

#: ``wbits`` of a gzip stream (``.nii.gz``) and of raw deflate (DICOM's Deflated Explicit VR
#: Little Endian, PS3.5 A.5), as in :func:`zlib.decompressobj`.
GZIP_WBITS = 16 + zlib.MAX_WBITS
RAW_DEFLATE_WBITS = -zlib.MAX_WBITS

#: Inflated bytes kept behind the read position, so the small backward seeks of a parser
#: (pydicom peeks at a tag and steps back) do not restart inflation from the start.
_KEEP_BYTES = 64 * 2**10

_GZIP_MAGIC = b"\x1f\x8b"


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
        >>> require_within_limits("ct/", (2000, 512, 512), 2)
        >>> require_within_limits("x.nii.gz", (1000, 1000, 1000), 1)
        Traceback (most recent call last):
        ...
        medseg.errors.ResourceLimitError: x.nii.gz: declared image 1000 x 1000 x 1000 = 1000000000 voxels is over the limit of 536870912 voxels (ingest.max_voxels)
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


class InflatedReader:
    """A read-only, seekable file object over the compressed stream stored in ``path`` from
    byte ``start``, inflated in bounded chunks as it is read.

    ``read``/``readinto`` inflate only what they return (in calls of at most
    :data:`INFLATE_CHUNK_BYTES`); ``seek`` only moves the position, and the next read inflates
    and drops what lies between; a seek further back than the last 64 KiB restarts inflation
    from the start of the stream. So a parser can skip a 1 GB element, or a caller read
    1 KB of header, without holding more than a chunk. The file is opened when needed and
    closed at the end of the stream and by :meth:`release`; a copy or pickle starts afresh
    (pydicom keeps the reader of a deflated file for its deferred elements).

    Attributes:
        limit: the end (in inflated bytes) of what may be read; bytes the stream holds beyond
            it are a ResourceLimitError (a stream that ends before it is a short file, which
            its reader reports). Owners lower it once the header declares a size.
        budget: bytes ``read``/``readinto`` may still return before a ResourceLimitError
            (``None``: no bound; see :meth:`set_budget`); seeks are free. Bounds what a
            parser keeps in memory while it skips what it defers.
        name: the file, as pydicom and nibabel name it in their messages.
        failure: the first MedsegError raised, kept because a parser may re-raise its own.

    Raises (from reads and seeks):
        ResourceLimitError: the stream holds more than ``limit`` bytes, or ``budget`` is spent.
        UnreadableScanError: the compressed data are corrupt or end before the stream does
            (truncated file).
    """

    def __init__(
        self,
        path: Path,
        *,
        wbits: int,
        limit: int,
        start: int = 0,
        what: object = None,
        limit_name: str = "the declared size",
    ) -> None:
        self.name = str(path)
        self.limit = int(limit)
        self.limit_name = limit_name
        self.budget: int | None = None
        self._budget_name = ""
        self.failure: Exception | None = None
        self._what = path if what is None else what
        self._start, self._wbits = int(start), int(wbits)
        self._pos = 0
        self._restart()

    # ---- the interface pydicom and nibabel use -------------------------------------------

    @property
    def closed(self) -> bool:
        """Never: a released reader reopens its file on the next read."""
        return False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def write(self, data: bytes, /) -> int:
        """Refused: the reader is read-only (the method makes it a file object to nibabel)."""
        raise io.UnsupportedOperation(f"{self.name}: opened for reading only")

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0, /) -> int:
        if whence == 1:
            offset += self._pos
        elif whence == 2:
            self._inflate_to(math.inf)  # to the end, keeping nothing; bounded by ``limit``
            offset += self._out
        elif whence != 0:
            raise ValueError(f"invalid whence {whence}")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        self._pos = int(offset)
        return self._pos

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            size = max(0, self.limit - self._pos) + 1  # to the end: bounded by ``limit``
        out = bytearray(0)
        self._copy(int(size), out.extend)
        return bytes(out)

    def readinto(self, buffer: Any, /) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0

        def put(data: bytes) -> None:
            nonlocal filled
            view[filled : filled + len(data)] = data
            filled += len(data)

        self._copy(len(view), put)
        return filled

    def set_budget(self, n_bytes: int | None, name: str = "") -> None:
        """Allow ``read``/``readinto`` to return ``n_bytes`` more in all (None: no bound);
        ``name`` says in the error what the bound is."""
        self.budget = None if n_bytes is None else int(n_bytes)
        self._budget_name = f"{n_bytes} bytes" + (f" ({name})" if name else "")

    def release(self) -> None:
        """Close the file and drop the inflation state (the next read starts afresh)."""
        self._close()
        self._restart(keep_pos=True)

    def close(self) -> None:
        self.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __getstate__(self) -> dict[str, Any]:
        keep = (
            "name",
            "limit",
            "limit_name",
            "budget",
            "_budget_name",
            "_what",
            "_start",
            "_wbits",
        )
        return {key: self.__dict__[key] for key in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.failure = None
        self._restart()

    def __del__(self) -> None:
        self._close()

    def as_binary_io(self) -> BinaryIO:
        """This reader, typed as the file object pydicom and nibabel take."""
        return self  # type: ignore[return-value]

    # ---- inflation ------------------------------------------------------------------------

    def _restart(self, keep_pos: bool = False) -> None:
        self._file: BinaryIO | None = None
        self._inflater: Any = zlib.decompressobj(self._wbits)
        self._input = b""  # compressed bytes read from the file, not yet given to zlib
        self._out = 0  # inflated bytes produced so far
        self._tail = b""  # the last inflated bytes, ending at ``_out``
        self._ended = False
        if not keep_pos:
            self._pos = 0

    def _close(self) -> None:
        file = getattr(self, "_file", None)  # None too when __init__ did not get so far
        if file is not None:
            file.close()
            self._file = None

    def _fail(self, error: Exception) -> Exception:
        if self.failure is None:
            self.failure = error
        self._close()
        return error

    def _compressed(self) -> bytes:
        if self._input:
            data, self._input = self._input, b""
            return data
        if self._file is None:
            self._file = open(self.name, "rb")  # noqa: SIM115 (kept open across reads)
            self._file.seek(self._start)
        return self._file.read(INFLATE_CHUNK_BYTES)

    def _next_member(self) -> bool:
        """After a gzip member, start the next one (concatenated members, as gzip reads them);
        False at the end of the stream (trailing zero padding or other bytes are ignored)."""
        rest = self._inflater.unused_data.lstrip(b"\x00")
        if self._wbits == GZIP_WBITS:
            while len(rest) < len(_GZIP_MAGIC):
                more = self._compressed()
                if not more:
                    break
                rest = (rest + more).lstrip(b"\x00")
            if rest.startswith(_GZIP_MAGIC):
                self._inflater = zlib.decompressobj(self._wbits)
                self._input = rest
                return True
        self._ended = True
        self._close()
        return False

    def _inflate(self, max_length: int) -> bytes:
        """Up to ``max_length`` (> 0) more inflated bytes; b"" at the end of the stream."""
        while not self._ended:
            if self._inflater.eof:
                self._next_member()
                continue
            source = self._inflater.unconsumed_tail or self._compressed()
            try:
                data = self._inflater.decompress(source, max_length)
            except zlib.error as exc:
                raise self._fail(
                    UnreadableScanError(f"{self._what}: compressed data cannot be inflated ({exc})")
                ) from exc
            if data:
                return data
            if not source and not self._inflater.eof:
                raise self._fail(
                    UnreadableScanError(
                        f"{self._what}: compressed data end after {self._out} inflated bytes, "
                        "before the end of the stream (truncated file?)"
                    )
                )
        return b""

    def _produce(self, max_length: int) -> bytes:
        """The next inflated bytes, at most ``max_length`` and never past ``limit``."""
        room = self.limit - self._out
        if room <= 0:
            if self._ended or not self._inflate(1):
                return b""
            raise self._fail(
                ResourceLimitError(
                    f"{self._what}: inflates to more than {self.limit} bytes "
                    f"({_gib(self.limit)}), {self.limit_name}"
                )
            )
        data = self._inflate(min(max_length, room, INFLATE_CHUNK_BYTES))
        self._out += len(data)
        self._tail = (self._tail + data if len(data) < _KEEP_BYTES else data)[-_KEEP_BYTES:]
        return data

    def _inflate_to(self, position: float) -> None:
        """Inflate, keeping only the tail, until ``position`` or the end of the stream."""
        if position < self._out - len(self._tail):
            self._close()
            self._restart(keep_pos=True)
        while self._out < position:
            if not self._produce(int(min(position - self._out, INFLATE_CHUNK_BYTES))):
                return

    def _copy(self, size: int, put: Any) -> None:
        """Hand ``put`` the bytes from the position on, at most ``size``, in chunks."""
        if size <= 0:
            return
        if self.budget is not None and size > self.budget:
            size = self.budget + 1  # one byte more than allowed decides it
        self._inflate_to(self._pos)
        got = 0
        if self._pos < self._out:  # in the tail
            data = self._tail[len(self._tail) - (self._out - self._pos) :][:size]
            put(data)
            got = len(data)
        while got < size:
            data = self._produce(size - got)
            if not data:
                break
            put(data)
            got += len(data)
        self._pos += got
        if self.budget is not None:
            self.budget -= got
            if self.budget < 0:
                raise self._fail(
                    ResourceLimitError(
                        f"{self._what}: more than {self._budget_name} read into memory"
                    )
                )
