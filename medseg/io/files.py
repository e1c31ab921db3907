"""Output writing: outputs appear complete or not at all, and inputs are never touched.

This module is the one place that decides whether medseg may write at a path. Every command
that writes (``predict``, ``convert``, ``export-rtstruct``, ``evaluate``, ``batch``, ``pacs``,
``train``, ``demo``) calls :func:`check_output` (or :func:`claim_output_dir` for an output
folder that grows over several runs) with its inputs before it does any work, and writes
through :func:`atomic_dir` / :func:`atomic_path`:

* **Inputs are read-only.** An output path that is, contains or lies inside any input
  (resolved, symlinks followed) is refused, ``--overwrite`` or not.
* **Only medseg's own outputs are replaced.** Every folder medseg writes carries a marker file
  (:data:`OUTPUT_MARKER`); ``overwrite`` replaces a folder only if it has the marker (or is
  empty), and a file only if the caller recognises it as one medseg wrote (for DICOM: the
  implementation class UID medseg writes, :func:`medseg.io.dicom.is_medseg_dicom`).
* **The file system's refusals are named errors.** A read-only or full file system, a
  missing permission or a parent that is a file give an :class:`~medseg.errors.OutputError`
  naming the path and the reason; the output is then absent (or, with ``overwrite``, the
  previous one is unchanged).
* **Permissions follow the umask.** Temporary files and folders (``mkstemp``/``mkdtemp``,
  which create them 0600/0700) get the mode an ordinary ``open``/``mkdir`` would give them
  before they are renamed into place, so a service account in the same group can read the
  results when the umask allows it. ``medseg --private`` sets the umask to 077 (files 0600,
  folders 0700).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from medseg.errors import OutputError

__all__ = [
    "OUTPUT_MARKER",
    "atomic_dir",
    "atomic_path",
    "check_output",
    "claim_output_dir",
    "current_umask",
    "describe_os_error",
    "refuse_overlap",
]

#: File inside every folder medseg writes; ``overwrite`` only ever replaces such a folder.
OUTPUT_MARKER = ".medseg-output"

#: ``errno`` values that say the *output* side cannot be written (as opposed to a bug or an
#: input that cannot be read); they become :class:`~medseg.errors.OutputError`.
_OUTPUT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EFBIG,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
    }
)


def _reason(error: OSError) -> str:
    return {
        errno.ENOSPC: "no space left on the device (disk full)",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
    }.get(error.errno or -1, error.strerror or str(error))


def describe_os_error(error: OSError) -> str:
    """One line for an ``OSError``: its file and its reason (``ENOSPC`` -> "disk full")."""
    where = error.filename if error.filename is not None else "output"
    return f"{os.fsdecode(where)}: {_reason(error)}"


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def refuse_overlap(output: Path, inputs: Iterable[Path | str | None]) -> None:
    """Refuse an output path that is, contains or lies inside any of ``inputs``.

    Paths are compared resolved (symlinks followed, ``..`` removed), so a link to an input
    folder, or ``ct/../ct``, is recognised.

    Raises:
        OutputError: naming the output, the input and how they overlap.

    Example:
        >>> refuse_overlap(Path("/data/p1/ct/out"), [Path("/data/p1/ct")])
        Traceback (most recent call last):
        ...
        medseg.errors.OutputError: /data/p1/ct/out: output lies inside the input /data/p1/ct; inputs are never written to: choose an output outside them
    """
    out = _resolved(Path(output))
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = _resolved(Path(given))
        if out == source:
            how = "is the input"
        elif out.is_relative_to(source):
            how = "lies inside the input"
        elif source.is_relative_to(out):
            how = "contains the input"
        else:
            continue
        raise OutputError(
            f"{output}: output {how} {given}; inputs are never written to: choose an output "
            "outside them"
        )


def _is_medseg_dir(folder: Path) -> bool:
    """Has the marker, is empty, or holds only DICOM files medseg wrote (a written series,
    which carries no marker so that DICOM tools see DICOM files only)."""
    if (folder / OUTPUT_MARKER).is_file():
        return True
    from medseg.io.dicom import is_medseg_dicom  # dicom_write imports this module

    entries = list(folder.iterdir())
    return all(p.is_file() and not p.is_symlink() and is_medseg_dicom(p) for p in entries)


def _probe_writable(target: Path) -> None:
    """Refuse early where nothing could be written: the nearest existing ancestor of
    ``target`` must be a folder in which a file can be created (this catches read-only file
    systems and folders without write permission, also for root)."""
    ancestor = _resolved(target).parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{target}: cannot be created: {ancestor} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".medseg-probe.", dir=ancestor)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write in {ancestor}: {_reason(exc)}") from exc
    os.close(fd)
    os.unlink(probe)


def check_output(
    target: Path,
    *,
    inputs: Iterable[Path | str | None] = (),
    overwrite: bool = False,
    is_folder: bool = True,
    is_medseg_file: Callable[[Path], bool] | None = None,
) -> Path:
    """Check, before any work, that ``target`` may be written; returns it.

    Args:
        target: the output folder (``is_folder``) or file.
        inputs: every path the command reads (image, labels, RT-STRUCT, config, model).
        overwrite: whether an existing output may be replaced; even then only one that medseg
            wrote: a folder with :data:`OUTPUT_MARKER` (or an empty one), or a file for which
            ``is_medseg_file`` says so (without it, no existing file is replaced).
        is_folder: ``target`` is a folder (else a file).

    Raises:
        OutputError: the output overlaps an input, exists (without ``overwrite``), is not
            medseg's, is of the wrong kind (a folder where a file goes), or cannot be written.
    """
    target = Path(target)
    refuse_overlap(target, inputs)
    _refuse_existing(target, overwrite, is_folder=is_folder, is_medseg_file=is_medseg_file)
    _probe_writable(target)
    return target


def claim_output_dir(
    folder: Path, *, inputs: Iterable[Path | str | None] = (), recognise: Iterable[str] = ()
) -> Path:
    """Create (or reuse) an output folder that runs add to (evaluation, training, batch).

    An existing folder is reused only if it is medseg's (:data:`OUTPUT_MARKER`, or one of the
    file names in ``recognise``, e.g. a batch root's ``ledger.sqlite`` from before the marker)
    or empty; the marker is written into it.

    Raises:
        OutputError: as :func:`check_output`, or the folder holds files medseg did not write.
    """
    folder = Path(folder)
    refuse_overlap(folder, inputs)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: is a file; expected a folder to write into")
    known = any((folder / name).exists() for name in recognise)
    if folder.is_dir() and not known and not _is_medseg_dir(folder):
        raise OutputError(
            f"{folder}: exists and is not a medseg output folder (no {OUTPUT_MARKER}); choose "
            "a new or empty folder"
        )
    _probe_writable(folder / OUTPUT_MARKER)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_marker(folder)
    except OSError as exc:
        raise OutputError(describe_os_error(exc)) from exc
    return folder


def _write_marker(folder: Path) -> None:
    import medseg

    marker = folder / OUTPUT_MARKER
    if not marker.is_file():
        marker.write_text(f"written by medseg {medseg.__version__}\n", encoding="ascii")


def _output_os_error(error: BaseException) -> OSError | None:
    """The ``OSError`` that says the output cannot be written, if ``error`` is or wraps one
    (pydicom re-raises a write error as a new ``OSError`` without its errno, naming the tag,
    with the original as its cause)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _OUTPUT_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def _ordinary_mode(path: Path, *, folder: bool) -> None:
    """Give a ``mkstemp``/``mkdtemp`` path the mode ``open``/``mkdir`` would have given."""
    base = 0o777 if folder else 0o666
    os.chmod(path, base & ~current_umask())


def _output_error(target: Path, exc: OSError, previous_kept: bool) -> OutputError:
    kept = "the previous output is unchanged" if previous_kept else "nothing was written"
    return OutputError(f"{target}: cannot write: {_reason(exc)}; {kept}")


def _appeared(target: Path) -> OutputError:
    """A second writer made ``target`` while this one wrote: theirs is kept."""
    return OutputError(
        f"{target}: appeared while this run was writing it (another process?); "
        "refusing to overwrite it: this run's output was discarded"
    )


def _refuse_existing(
    target: Path,
    overwrite: bool,
    *,
    is_folder: bool,
    is_medseg_file: Callable[[Path], bool] | None,
) -> None:
    """The rule for a ``target`` that exists: the right kind, ``overwrite``, and medseg's."""
    if not (target.exists() or target.is_symlink()):
        return
    if target.is_dir() != is_folder:
        kind = "a folder" if target.is_dir() else "a file"
        wanted = "a folder" if is_folder else "a file path"
        raise OutputError(f"{target}: is {kind}; expected {wanted} to write")
    if not overwrite:
        raise OutputError(
            f"{target}: exists; refusing to overwrite (--overwrite replaces an output medseg wrote)"
        )
    if is_folder and not _is_medseg_dir(target):
        raise OutputError(
            f"{target}: exists and is not a medseg output (no {OUTPUT_MARKER}); refusing to "
            "replace a folder medseg did not write"
        )
    if not is_folder and (is_medseg_file is None or not is_medseg_file(target)):
        raise OutputError(f"{target}: exists and was not written by medseg; refusing to replace it")


def _prepare(target: Path, overwrite: bool, *, is_folder: bool) -> Path:
    target = Path(target)
    # files inside medseg's own output folders: ``overwrite`` replaces whatever is there
    _refuse_existing(target, overwrite, is_folder=is_folder, is_medseg_file=lambda _: True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_error(target, exc, False) from exc
    return target


@contextlib.contextmanager
def atomic_path(target: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed onto ``target``.

    On error the temporary file is removed and ``target`` is left as it was. Callers that
    write a user-named file check it first with :func:`check_output`; ``overwrite`` here is
    for files inside medseg's own output folders.

    Raises:
        OutputError: ``target`` exists and ``overwrite`` is False, is a folder, or the file
            system refuses the write (read-only, full): ``target`` is then unchanged.
    """
    target = _prepare(target, overwrite, is_folder=False)
    existed = target.exists()
    tmp: Path | None = None
    try:  # one try from the temporary's creation on: Ctrl-C anywhere leaves no temporary
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        tmp = Path(tmp_name)
        os.close(fd)
        yield tmp
        _ordinary_mode(tmp, folder=False)
        os.replace(tmp, target)
    except (OSError, OutputError) as exc:  # a nested writer's error is named as this output's
        cause = _output_os_error(exc)
        if cause is not None:
            raise _output_error(target, cause, existed) from exc
        raise
    finally:
        with contextlib.suppress(OSError):
            if tmp is not None and tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def atomic_dir(target: Path, *, overwrite: bool = False, marker: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``target``.

    With ``marker`` the folder gets :data:`OUTPUT_MARKER`, so a later ``overwrite`` recognises
    it as medseg's (a DICOM series folder is recognised by its files instead).

    Raises:
        OutputError: ``target`` exists and ``overwrite`` is False, or it is not a folder medseg
            wrote, or the file system refuses the write (read-only, full): ``target`` is then
            unchanged.
    """
    target = _prepare(target, overwrite, is_folder=True)
    existed = target.exists()
    tmp: Path | None = None
    old: Path | None = None
    try:  # one try from the temporary's creation on: Ctrl-C anywhere leaves no temporary
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        _ordinary_mode(tmp, folder=True)
        if marker:
            _write_marker(tmp)
        yield tmp
        if target.exists() and not existed:
            raise _appeared(target)
        if target.exists():
            old = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
            )
            os.replace(target, old)
            os.replace(tmp, target)
        else:
            try:
                os.replace(tmp, target)  # fails on a non-empty folder made since the check
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise _appeared(target) from exc
    except (OSError, OutputError) as exc:  # a nested writer's error is named as this output's
        cause = _output_os_error(exc)
        if cause is not None:
            raise _output_error(target, cause, existed) from exc
        raise
    finally:
        if old is not None and not target.exists():  # stopped between the two renames
            with contextlib.suppress(OSError):
                os.replace(old, target)
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
