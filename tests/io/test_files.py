"""medseg.io.files: where medseg may write (the rules the CLI's hostile-use table relies on)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medseg.errors import OutputError
from medseg.io.files import (
    OUTPUT_MARKER,
    atomic_dir,
    atomic_path,
    check_output,
    claim_output_dir,
    refuse_overlap,
)

_PARTS = st.lists(st.sampled_from(["a", "b", "ct", "..", "."]), min_size=1, max_size=4)


@given(_PARTS, _PARTS)
def test_overlap_is_refused_exactly_when_one_path_is_within_the_other(
    out_parts: list[str], in_parts: list[str]
) -> None:
    root = Path("/data/root")
    out, source = root.joinpath(*out_parts), root.joinpath(*in_parts)
    a, b = Path(os.path.normpath(out)), Path(os.path.normpath(source))
    overlapping = a == b or a.is_relative_to(b) or b.is_relative_to(a)
    if overlapping:
        with pytest.raises(OutputError, match="inputs are never written to"):
            refuse_overlap(out, [source])
    else:
        refuse_overlap(out, [source])


def test_overlap_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "patient" / "ct").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "patient")
    with pytest.raises(OutputError, match="lies inside the input"):
        refuse_overlap(tmp_path / "link" / "ct" / "out", [tmp_path / "patient" / "ct"])
    refuse_overlap(tmp_path / "elsewhere", [tmp_path / "link"])


def test_overwrite_replaces_only_medseg_folders(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "labels.nii.gz").write_bytes(b"1")
    assert (tmp_path / "out" / OUTPUT_MARKER).is_file()
    with pytest.raises(OutputError, match="exists; refusing to overwrite"):
        check_output(tmp_path / "out")
    check_output(tmp_path / "out", overwrite=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match="not a medseg output"):
        check_output(foreign, overwrite=True)
    with (
        pytest.raises(OutputError, match="not a medseg output"),
        atomic_dir(foreign, overwrite=True),
    ):
        pass
    assert (foreign / "notes.txt").read_text() == "x"
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", overwrite=True)  # an empty folder loses nothing


def test_a_file_is_replaced_only_if_recognised(tmp_path: Path) -> None:
    target = tmp_path / "rtss.dcm"
    target.write_bytes(b"someone's")
    with pytest.raises(OutputError, match="not written by medseg"):
        check_output(target, is_folder=False, overwrite=True)
    check_output(target, is_folder=False, overwrite=True, is_medseg_file=lambda p: True)
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path, is_folder=False)


def test_output_that_appears_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    """A second process wrote the same output while this one ran: this run's output is
    discarded, the other's kept."""
    target = tmp_path / "out"
    appeared = pytest.raises(OutputError, match="appeared while this run was writing")
    with appeared, atomic_dir(target) as tmp:
        (tmp / "mine").write_text("mine")
        target.mkdir()
        (target / "theirs").write_text("theirs")
    assert sorted(p.name for p in target.iterdir()) == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left


def test_a_nested_write_error_names_the_outer_output(tmp_path: Path) -> None:
    target = tmp_path / "case"
    full = OSError(errno.ENOSPC, "No space left on device")
    named = pytest.raises(
        OutputError, match=r"case: cannot write: no space left.*nothing was written"
    )
    with named, atomic_dir(target) as tmp, atomic_path(tmp / "seg.dcm"):
        raise full
    assert list(tmp_path.iterdir()) == []


def test_claimed_folder_must_be_new_empty_or_medseg(tmp_path: Path) -> None:
    claim_output_dir(tmp_path / "eval")
    claim_output_dir(tmp_path / "eval")  # again: medseg's own
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(OutputError, match="not a medseg output folder"):
        claim_output_dir(tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]
    (tmp_path / "old-batch").mkdir()
    (tmp_path / "old-batch" / "ledger.sqlite").write_bytes(b"")
    claim_output_dir(tmp_path / "old-batch", recognise=("ledger.sqlite",))
