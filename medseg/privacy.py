"""Pseudonyms for what logs and records name, and safe file names for what outputs are called.

Logs, progress output, MLflow runs, error messages and ledger rows never carry a patient's
name, ID, birth date, accession number or institution. Where they must name a case they use
a *pseudonym*: ``case-`` and 16 hex digits of an HMAC-SHA256 of something that identifies the
case (a StudyInstanceUID), keyed with a random *salt* kept in the output folder
(:func:`load_salt`). The same study gets the same id in every run into that folder (so a
rerun finds its ledger rows), another id in another output folder, and nobody without the
salt can test a guessed UID against an id seen in a log.

Output names that come from DICOM attributes (ROI names, descriptions) pass through
:func:`safe_filename`, the one place that turns text into a file name: no ``/``, no ``..``,
no hidden or reserved names, no control characters, bounded length.

Example:
    >>> pseudonym("1.2.3", b"0" * 32)
    'case-bff0413eec9998a5'
    >>> safe_filename("../../etc/passwd")
    'etc_passwd'
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

from medseg.errors import ConfigError

__all__ = [
    "MAX_FILENAME_LENGTH",
    "SALT_NAME",
    "load_salt",
    "pseudonym",
    "redact",
    "redact_credentials",
    "redact_log_credentials",
    "safe_filename",
    "unique_filenames",
]

#: File of an output folder that holds its salt (hex, owner read/write only).
SALT_NAME = ".medseg-salt"
#: Longest name :func:`safe_filename` returns (characters, all ASCII), leaving room for a
#: suffix such as ``.nii.gz`` and a ``_2`` within the usual 255-byte limit.
MAX_FILENAME_LENGTH = 100

_SALT_BYTES = 32
# ``scheme://user:password@`` or ``scheme://token@`` in any text: the part before ``@`` is a
# credential. Matched anywhere in a message, not only at its start, because libraries (MLflow,
# requests) append URLs to their own messages.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<credentials>[^/\s]*)@")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Names Windows (and so SMB shares) refuse whatever the extension.
_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
)


def load_salt(folder: Path) -> bytes:
    """The salt of an output folder: read from ``folder/.medseg-salt``, created on first use.

    The file is created atomically (a second process racing to create it reads the first
    one's salt) and readable by its owner only. Deleting it gives every case a new id.

    Raises:
        ConfigError: the salt file exists but does not hold a salt.
    """
    folder = Path(folder)
    path = folder / SALT_NAME
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{SALT_NAME}.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(_SALT_BYTES) + "\n")
        try:
            os.link(tmp, path)  # fails if another process made one meanwhile: theirs wins
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        salt = bytes.fromhex(text)
    except ValueError:
        salt = b""
    if len(salt) < 16:
        raise ConfigError(f"{path}: not a salt (expected {2 * _SALT_BYTES} hex digits)")
    return salt


def pseudonym(value: str, salt: bytes, prefix: str = "case-") -> str:
    """``prefix`` and 16 hex digits of HMAC-SHA256(``salt``, ``value``).

    Example:
        >>> a, b = pseudonym("1.2.3", b"a" * 32), pseudonym("1.2.3", b"b" * 32)
        >>> a != b and a.startswith("case-") and len(a) == 21
        True
    """
    digest = hmac.new(salt, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return prefix + digest.hexdigest()[:16]


def safe_filename(text: str, *, fallback: str = "unnamed") -> str:
    """A file name made from ``text`` that stays inside the folder it is joined to.

    Every run of characters other than ASCII letters, digits, ``.``, ``_`` and ``-`` becomes
    one ``_`` (so ``/``, ``\\``, NUL, newlines and spaces do); leading ``.``, ``_`` and ``-``
    and trailing ``.`` and ``_`` are dropped (no hidden files, no ``..``, no option-like
    names); Windows device names (``CON``, ``COM1``, ...) get a ``_`` after them; a name longer than
    :data:`MAX_FILENAME_LENGTH` is cut and ends with 8 hex digits of a hash of ``text`` (so
    long names that share a beginning stay distinct). Empty results become ``fallback``.

    Example:
        >>> safe_filename("Lt Lung"), safe_filename(".."), safe_filename("a\\x00b/c")
        ('Lt_Lung', 'unnamed', 'a_b_c')
    """
    name = _UNSAFE.sub("_", text).lstrip("._-").rstrip("._")
    if not name:
        name = _UNSAFE.sub("_", fallback).strip("._-") or "unnamed"
    stem, dot, rest = name.partition(".")
    if stem.upper() in _RESERVED:
        name = f"{stem}_{dot}{rest}"
    if len(name) > MAX_FILENAME_LENGTH:
        tag = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = name[: MAX_FILENAME_LENGTH - 9].rstrip("._") + "-" + tag
    return name


def unique_filenames(texts: Iterable[str], *, fallback: str = "unnamed") -> list[str]:
    """:func:`safe_filename` of each text, made distinct ignoring case (``_2``, ``_3``, ...).

    Example:
        >>> unique_filenames(["GTV/1", "GTV 1", "gtv_1"])
        ['GTV_1', 'GTV_1_2', 'gtv_1_3']
    """
    out: list[str] = []
    taken: set[str] = set()
    for text in texts:
        base = safe_filename(text, fallback=fallback)
        candidate, n = base, 2
        while candidate.lower() in taken:
            candidate, n = f"{base}_{n}", n + 1
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def redact(text: str, replacements: Mapping[str, str]) -> str:
    """``text`` with every occurrence of each key replaced by its value (longest keys first).

    Used to take input paths (whose folder names may be patient names or IDs) out of
    messages before they are logged, e.g. ``{"/data/DOE^JOHN": "<case_002>"}``.

    Example:
        >>> redact("/data/P123/ct: no RT-STRUCT", {"/data/P123": "<case_000>"})
        '<case_000>/ct: no RT-STRUCT'
    """
    for key in sorted((k for k in replacements if k), key=len, reverse=True):
        text = text.replace(key, replacements[key])
    return text


def redact_credentials(text: str) -> str:
    """``text`` with the credentials of every URL in it masked: ``user:***@``.

    A URL's ``user:password@`` (or a lone token before ``@``) never appears in a message, a
    log line or an MLflow tag; the host stays, so the message still says where.

    Example:
        >>> redact_credentials("cannot reach ftp://ann:s3cret@pacs:21/x")
        'cannot reach ftp://ann:***@pacs:21/x'
        >>> redact_credentials("http://tok@host/ and https://host/ok")
        'http://***@host/ and https://host/ok'
        >>> redact_credentials("https://u:p@ss:w@host:1/a@b")
        'https://u:***@host:1/a@b'
    """

    def mask(match: re.Match[str]) -> str:
        # up to the last "@" of the authority: a password may hold "@" (and ":")
        user, colon, _ = match.group("credentials").partition(":")
        return f"{match.group('scheme')}{user}:***@" if colon else f"{match.group('scheme')}***@"

    return _URL_CREDENTIALS.sub(mask, text)


def redact_log_credentials() -> None:
    """Mask URL credentials in every log record this process creates, whichever library logs
    it and whichever handler writes it (MLflow and requests log URLs at DEBUG).

    Installs a log record factory (idempotent): each record's message is formatted, passed
    through :func:`redact_credentials` and stored formatted. The CLI calls it at start-up.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "_medseg_redacts", False):
        return

    def make(*args: object, **kwargs: object) -> logging.LogRecord:
        record = factory(*args, **kwargs)  # type: ignore[arg-type]
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a library's bad format string: leave it to logging
            return record
        redacted = redact_credentials(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return record

    make._medseg_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make)
