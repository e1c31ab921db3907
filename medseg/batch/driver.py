"""The batch driver: :func:`run_cases` and :func:`run_batch` decide which cases run, hand
them to an executor, and record each in the ledger and ``summary.csv`` (see
:mod:`medseg.batch` for the design)."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import logging
import shutil
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.batch.cases import (
    CASES_DIR,
    LEDGER_NAME,
    LOCK_NAME,
    STAGING_DIR,
    SUMMARY_NAME,
    BatchInterrupted,
    BatchProgress,
    BatchSummary,
    CaseOutcome,
    CaseSpec,
    CaseStatus,
    CaseTask,
    ModelRef,
    SummaryRow,
    discover_cases,
    resolve_model_ref,
)
from medseg.batch.executors import Runner, keep_model, make_runner
from medseg.batch.ledger import Ledger, read_manifest
from medseg.batch.options import RunOptions, options_from_keywords
from medseg.batch.stopping import Stop, StopSignals, stop_signals
from medseg.config import BatchConfig
from medseg.errors import ConfigError, InputError, MedsegError
from medseg.io.files import atomic_path, claim_output_dir
from medseg.privacy import SALT_NAME, load_salt
from medseg.status import SummaryStatus
from medseg.timing import format_stage_seconds

if TYPE_CHECKING:
    from medseg.batch.references import ReferenceOptions
    from medseg.evaluation import EvaluationSummary

__all__ = ["claim_output_root", "link_inputs", "run_batch", "run_cases", "write_summary_csv"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _locked(output_root: Path) -> Iterator[None]:
    with open(output_root / LOCK_NAME, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ConfigError(
                f"{output_root}: another batch run is using this output folder"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_partial(cases_dir: Path) -> None:
    """Remove what a killed run left half written: hidden temporaries of case folders."""
    if cases_dir.is_dir():
        for path in cases_dir.iterdir():
            if path.name.startswith(".") and path.is_dir():
                shutil.rmtree(path)


def _clear_staging(staging: Path) -> None:
    """Remove every staged input: the links' targets name input folders, which may be named
    after patients, so none outlives its case (a killed run may have left some)."""
    if staging.is_symlink():
        staging.unlink()
    shutil.rmtree(staging, ignore_errors=True)


Prepare = Callable[[CaseSpec, Path], Path]


def _decide(spec: CaseSpec, row: Any, model_id: str, out_dir: Path, retry_failed: bool) -> str:
    """``run``, ``skip`` (done, unchanged) or ``keep_failed`` (failed, unchanged, no retry)."""
    if row is None or row["fingerprint"] != spec.fingerprint or row["model_id"] != model_id:
        return "run"
    if row["status"] == CaseStatus.DONE.value:
        manifest = read_manifest(out_dir)
        same = manifest is not None and manifest.get("fingerprint") == spec.fingerprint
        return "skip" if same else "run"
    if row["status"] == CaseStatus.FAILED.value and not retry_failed:
        return "keep_failed"
    return "run"


#: The loose keyword arguments :func:`run_cases` took before :class:`RunOptions` (until 0.2).
_RUN_CASES_KEYWORDS = ("executor", "workers", "retry_failed", "ray_address", "settings", "progress")
#: Those :func:`run_batch` took.
_RUN_BATCH_KEYWORDS = (*_RUN_CASES_KEYWORDS, "selection", "privacy")


def run_cases(
    specs: Sequence[CaseSpec],
    output_root: Path,
    model: ModelRef,
    prepare: Prepare,
    *,
    options: RunOptions | None = None,
    source: str = "folder",
    loaded_model: Any = None,
    after: Callable[[Sequence[SummaryRow], Ledger], None] | None = None,
    **deprecated: Any,
) -> BatchSummary:
    """Run every case of ``specs`` that needs it, record each in the ledger, write summary.csv.

    Args:
        specs: the cases (from :func:`discover_cases` or a PACS query).
        output_root: where the ledger, ``summary.csv`` and ``cases/<case_id>/`` go.
        model: the checkpoint workers load, and its id.
        prepare: ``prepare(spec, folder)`` puts the case's input files into ``folder`` (links
            or downloads) and returns the folder to segment; it runs in the driver.
        options: executor, workers, ``retry_failed``, Ray address, progress callback and
            ``settings`` (fingerprint mode, time limits, Ray resources; ``None``: the
            defaults); ``selection`` and ``privacy`` were applied when ``specs`` were made.
        source: recorded in the ledger (``"folder"``, ``"pacs"``).
        loaded_model: ``model`` already loaded (the local executor then reuses it).
        after: called with the rows and the ledger once every case is settled, while the
            run still holds the output root (e.g. to send results to a PACS).
        **deprecated: the loose keywords ``executor``, ``workers``, ``retry_failed``,
            ``ray_address``, ``settings``, ``progress`` of 0.1.0 development, instead of
            ``options`` (a DeprecationWarning; removed in 0.2).

    Raises:
        ConfigError: another run holds ``output_root``; ``ledger.sqlite`` there is not a
            medseg ledger, or another process held it locked for ``batch.ledger_timeout_s``.
        BatchInterrupted: SIGINT or SIGTERM came (in the main thread); the cases in flight
            were abandoned and set back to ``queued``, and the summaries were written.
        MedsegError: comparing with ``options.references`` failed as a whole (e.g.
            ``OutputError``: ``OUTPUT_ROOT/evaluation`` holds files medseg did not write);
            raised once the ledger and the summaries are written.
    """
    options = options_from_keywords("run_cases", options, deprecated, _RUN_CASES_KEYWORDS)
    if options.references is not None:
        if source != "folder":
            raise ConfigError(
                f"references are compared for folder batches only (medseg batch --references), "
                f"not for a {source} run"
            )
        if options.references.agreement is not None:
            from medseg.evaluation import read_expert_agreement

            read_expert_agreement(options.references.agreement)  # a bad file fails before any case
    settings = options.settings or BatchConfig()
    executor = options.executor_used
    progress = options.progress
    output_root = Path(output_root).resolve()
    cases_dir = output_root / CASES_DIR
    cases_dir.mkdir(parents=True, exist_ok=True)
    staging = output_root / STAGING_DIR
    if loaded_model is not None:
        keep_model(model, loaded_model)
    with (
        stop_signals() as stop,
        _locked(output_root),
        Ledger(output_root / LEDGER_NAME, timeout_s=settings.ledger_timeout_s) as ledger,
    ):
        _remove_partial(cases_dir)
        for case_id in ledger.recover(cases_dir):
            log.info("case %s: finished by an interrupted run; marked done", case_id)
        _clear_staging(staging)
        run_id = uuid.uuid4().hex
        ledger.begin_run(run_id, executor.value, options.workers, model.model_id)
        outcomes: dict[str, SummaryRow] = {}
        to_run: deque[CaseSpec] = deque()
        for spec in specs:
            out_dir = cases_dir / spec.case_id
            if spec.error is not None:
                ledger.record(spec, source, CaseStatus.FAILED, model.model_id)
                log.warning("case %s: failed before running (%s)", spec.case_id, spec.error[0])
                outcomes[spec.case_id] = _row(
                    spec, SummaryStatus.FAILED, True, *spec.error, None, None
                )
                continue
            decision = _decide(
                spec, ledger.case(spec.case_id), model.model_id, out_dir, options.retry_failed
            )
            if decision == "skip":
                outcomes[spec.case_id] = _row(
                    spec, SummaryStatus.SKIPPED, False, None, None, None, out_dir
                )
            elif decision == "keep_failed":
                old: Any = ledger.case(spec.case_id)
                outcomes[spec.case_id] = _row(
                    spec,
                    SummaryStatus.FAILED,
                    False,
                    old["error_class"],
                    old["error_message"],
                    old["seconds"],
                    None,
                )
            else:
                ledger.record(spec, source, CaseStatus.QUEUED, model.model_id, out_dir)
                to_run.append(spec)
        counts = {s: sum(r.status is s for r in outcomes.values()) for s in SummaryStatus}
        total = len(specs)

        def progress_now() -> BatchProgress:
            return BatchProgress(
                total,
                counts[SummaryStatus.DONE],
                counts[SummaryStatus.FAILED],
                counts[SummaryStatus.SKIPPED],
            )

        def report(status: SummaryStatus) -> None:
            counts[status] += 1
            if progress is not None:
                progress(progress_now())

        if progress is not None:
            progress(progress_now())
        log.info("%d cases: %d to run, %d unchanged", total, len(to_run), len(outcomes))
        stopped: int | None = None
        try:
            stop.check()
            if to_run:
                runner = make_runner(options)
                stop.reclaim()
                _drive(
                    to_run,
                    ledger,
                    run_id,
                    model,
                    prepare,
                    output_root,
                    outcomes,
                    report,
                    runner,
                    stop,
                )
        except Stop as exc:
            stopped = exc.signal_number
            _settle_interrupted(specs, ledger, output_root, outcomes)
        rows = tuple(outcomes[s.case_id] for s in specs)
        if after is not None and stopped is None:
            try:
                with stop.armed():
                    after(rows, ledger)
            except Stop as exc:
                stopped = exc.signal_number
        evaluation = None
        not_evaluated: MedsegError | None = None
        if options.references is not None and stopped is None:
            try:
                with stop.armed():
                    evaluation = _evaluate_references(
                        specs, rows, output_root, options.references, model, loaded_model
                    )
            except Stop as exc:
                stopped = exc.signal_number
            except MedsegError as exc:  # the summaries are still written, then it is raised
                not_evaluated = exc
        ledger.end_run(run_id, rows)
        summary_path = write_summary_csv(rows, output_root / SUMMARY_NAME)
        _write_summary_page(rows, output_root, evaluation)
        _clear_staging(staging)
        if stopped is None:
            stopped = stop.signal_number  # came while the summaries were written
    if not_evaluated is not None and stopped is None:
        raise not_evaluated
    summary = BatchSummary(run_id, rows, output_root / LEDGER_NAME, summary_path, evaluation)
    if stopped is not None:
        raise BatchInterrupted(stopped, summary, summary.n_interrupted)
    return summary


def _settle_interrupted(
    specs: Sequence[CaseSpec], ledger: Ledger, output_root: Path, outcomes: dict[str, SummaryRow]
) -> None:
    """After a stop: the executor's workers are gone; remove what they left half written,
    settle the cases left ``running`` as a killed run's are (done if the folder is complete,
    else back to ``queued``), and list every unfinished case as ``interrupted``."""
    cases_dir = output_root / CASES_DIR
    _remove_partial(cases_dir)
    started = {row["case_id"] for row in ledger.cases() if row["status"] == "running"}
    recovered = set(ledger.recover(cases_dir))
    for spec in specs:
        if spec.case_id in outcomes:
            continue
        if spec.case_id in recovered:
            outcomes[spec.case_id] = _row(
                spec, SummaryStatus.DONE, True, None, None, None, cases_dir / spec.case_id
            )
        else:
            outcomes[spec.case_id] = _row(
                spec,
                SummaryStatus.INTERRUPTED,
                spec.case_id in started,
                None,
                None,
                None,
                None,
            )
    log.info(
        "stopped by signal: %d cases not finished",
        sum(r.status is SummaryStatus.INTERRUPTED for r in outcomes.values()),
    )


def _evaluate_references(
    specs: Sequence[CaseSpec],
    rows: Sequence[SummaryRow],
    output_root: Path,
    references: ReferenceOptions,
    model: ModelRef,
    loaded_model: Any,
) -> EvaluationSummary | None:
    """The predictions against the reference RT-STRUCTs, matched to the model's structures
    (the model is loaded again, in the driver, when the cases ran elsewhere)."""
    from medseg.batch.references import evaluate_references
    from medseg.pipeline import load_model

    loaded = loaded_model if loaded_model is not None else load_model(model.path)
    evaluation = evaluate_references(specs, rows, output_root, references, loaded.structures)
    if evaluation is None:
        log.warning("references: no finished case has a reference RT-STRUCT; nothing evaluated")
    else:
        log.info(
            "references: %d cases evaluated, %d failed; %s",
            len(evaluation.cases),
            len(evaluation.failures),
            evaluation.summary_csv,
        )
    return evaluation


def _write_summary_page(
    rows: Sequence[SummaryRow], output_root: Path, evaluation: EvaluationSummary | None = None
) -> None:
    """``summary.html`` beside ``summary.csv``: one row per case, linking its QA report,
    with the status word ``summary.csv`` has, and the agreement with the references when
    they were evaluated.

    The message of a failed case is its error class and medseg's message, which names no
    patient data.
    """
    from medseg.report import CaseSummary, write_summary_page

    cases = [
        CaseSummary(
            case=row.case_id,
            status=row.status,
            report_path=(
                row.out_dir / "report" / "report.html" if row.out_dir is not None else None
            ),
            volumes_ml=row.volumes_ml,
            message=f"{row.error_class}: {row.error_message}" if row.error_class else "",
        )
        for row in rows
    ]
    write_summary_page(output_root, cases, evaluation=evaluation)


def _drive(
    to_run: deque[CaseSpec],
    ledger: Ledger,
    run_id: str,
    model: ModelRef,
    prepare: Prepare,
    output_root: Path,
    outcomes: dict[str, SummaryRow],
    report: Callable[[SummaryStatus], None],
    runner: Runner,
    stop: StopSignals,
) -> None:
    specs = {spec.case_id: spec for spec in to_run}
    attempts: dict[str, int] = {}
    staging = output_root / STAGING_DIR
    in_flight = 0

    def settle(spec: CaseSpec, outcome: CaseOutcome, attempt_id: int) -> None:
        ledger.finish(attempt_id, outcome)
        # failed or not: the links' targets name input folders (see _clear_staging)
        shutil.rmtree(staging / spec.case_id, ignore_errors=True)
        out_dir = output_root / CASES_DIR / spec.case_id
        if outcome.status is CaseStatus.DONE:
            log.info(
                "case %s: done in %.1f s%s",
                spec.case_id,
                outcome.seconds,
                f" ({format_stage_seconds(outcome.stage_seconds)})"
                if outcome.stage_seconds
                else "",
            )
            outcomes[spec.case_id] = _row(
                spec, SummaryStatus.DONE, True, None, None, outcome.seconds, out_dir
            )
        else:
            log.warning("case %s: failed (%s)", spec.case_id, outcome.error_class)
            outcomes[spec.case_id] = _row(
                spec,
                SummaryStatus.FAILED,
                True,
                outcome.error_class,
                outcome.error_message,
                outcome.seconds,
                None,
            )
        report(outcomes[spec.case_id].status)

    try:
        while to_run or in_flight:
            while to_run and in_flight < runner.capacity:
                stop.check()
                spec = to_run.popleft()
                task = CaseTask(
                    spec.case_id,
                    staging / spec.case_id,
                    output_root / CASES_DIR / spec.case_id,
                    model,
                    spec.fingerprint,
                    spec.study_instance_uid,
                    spec.series_instance_uid,
                )
                attempt_id = ledger.start(run_id, task)
                try:
                    with stop.armed():
                        input_dir = prepare(spec, staging / spec.case_id)
                except (MedsegError, OSError) as exc:  # a download or link failed: this case only
                    settle(
                        spec,
                        CaseOutcome(
                            spec.case_id, CaseStatus.FAILED, 0.0, type(exc).__name__, str(exc)
                        ),
                        attempt_id,
                    )
                    continue
                attempts[spec.case_id] = attempt_id
                runner.submit(
                    CaseTask(
                        task.case_id,
                        input_dir,
                        task.out_dir,
                        model,
                        task.fingerprint,
                        task.study_instance_uid,
                        task.series_instance_uid,
                    )
                )
                in_flight += 1
            if in_flight:
                stop.check()
                with stop.armed():
                    outcome = runner.next_done()
                in_flight -= 1
                settle(specs[outcome.case_id], outcome, attempts.pop(outcome.case_id))
    except BaseException:
        runner.abort()  # a stop, or an error of the driver: no case may go on unrecorded
        raise
    runner.close()


def _row(
    spec: CaseSpec,
    status: SummaryStatus,
    ran: bool,
    error_class: str | None,
    error_message: str | None,
    seconds: float | None,
    out_dir: Path | None,
) -> SummaryRow:
    volumes: dict[str, float] = {}
    if out_dir is not None:
        manifest = read_manifest(out_dir) or {}
        volumes = {str(k): float(v) for k, v in (manifest.get("volumes_ml") or {}).items()}
    return SummaryRow(
        spec.case_id,
        status,
        ran,
        spec.study_instance_uid,
        spec.series_instance_uid,
        error_class,
        error_message,
        seconds,
        out_dir,
        volumes,
    )


def write_summary_csv(rows: Sequence[SummaryRow], path: Path) -> Path:
    """Write ``summary.csv`` (atomically): one row per case, its status word
    (:class:`~medseg.status.SummaryStatus`), a ``<structure>_ml`` column each."""
    names = sorted({name for row in rows for name in row.volumes_ml})
    header = [
        "case_id",
        "status",
        "ran",
        "error_class",
        "error_message",
        "seconds",
        "study_instance_uid",
        "series_instance_uid",
        "out_dir",
        *[f"{name}_ml" for name in names],
    ]
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow(
                [
                    row.case_id,
                    row.status.value,
                    "yes" if row.ran else "no",
                    row.error_class or "",
                    row.error_message or "",
                    "" if row.seconds is None else f"{row.seconds:.3f}",
                    row.study_instance_uid,
                    row.series_instance_uid or "",
                    "" if row.out_dir is None else str(row.out_dir),
                    *["" if n not in row.volumes_ml else f"{row.volumes_ml[n]:.4f}" for n in names],
                ]
            )
    return Path(path)


def link_inputs(input_root: Path) -> Prepare:
    """The ``prepare`` of :func:`run_cases` for cases found under ``input_root``.

    A case's files are the paths the walk of ``input_root`` found (:func:`discover_cases`),
    symlinks and files under symlinked folders included; each link points at that path under
    the root, never at a resolved target (which may lie outside the root, and whose path may
    hold a patient name), and the kernel follows the rest of the way when the case reads it.
    """
    given = Path(input_root)
    root = given.absolute()  # not resolved: ".." and links in it stay for the kernel

    def prepare(spec: CaseSpec, folder: Path) -> Path:
        """Links ``00001``, ``00002``, ... to the selected series' files (sorted by their
        paths under the root).

        The links are numbered, not named after the inputs, because input folder names often
        hold patient names and error messages name the files; ``ls -l`` shows the targets
        while the case runs (the folder is removed when it ends).

        Raises:
            InputError: a file is not under the input root (named by its number only).
        """
        relative = []
        for i, path in enumerate(spec.files, start=1):
            try:
                relative.append(_under(Path(path), given, root))
            except ValueError:
                raise InputError(
                    f"{spec.case_id}: input file {i} of {len(spec.files)} is not "
                    "under the input root"
                ) from None
        if folder.exists() or folder.is_symlink():
            _clear_staging(folder)
        folder.mkdir(parents=True)
        for i, rel in enumerate(sorted(relative, key=lambda r: r.as_posix()), start=1):
            (folder / f"{i:05d}").symlink_to(root / rel)
        return folder

    return prepare


def _under(path: Path, given: Path, root: Path) -> Path:
    """``path`` relative to the input root, found from the root as given or as an absolute
    path; lexically, so links are not followed. Raises ValueError for a path outside it."""
    for base, candidate in ((given, path), (root, path.absolute())):
        try:
            rel = candidate.relative_to(base)
        except ValueError:
            continue
        if ".." not in rel.parts:
            return rel
    raise ValueError(path)


def claim_output_root(output_root: Path, *, inputs: Sequence[Path | str | None]) -> Path:
    """``OUTPUT_ROOT`` of a batch, PACS run or listener, checked before any work: it must not
    be, contain or lie inside an input (the input root, a local model checkpoint), and an
    existing folder must be a batch root (its ledger or salt) or empty.

    Raises:
        OutputError: naming the root and the input, or the folder medseg did not write.
    """
    local = [p for p in inputs if p is not None and not str(p).startswith(("runs:/", "models:/"))]
    return claim_output_dir(Path(output_root), inputs=local, recognise=(LEDGER_NAME, SALT_NAME))


def run_batch(
    input_root: Path,
    output_root: Path,
    model: str | Path,
    *,
    options: RunOptions | None = None,
    **deprecated: Any,
) -> BatchSummary:
    """Segment every study under ``input_root`` into ``output_root`` (see the module doc).

    ``input_root`` is only read. ``options.selection`` and ``options.settings`` default to the
    model's own config (``series_selection``, ``batch``); ``options.privacy`` does not (a
    model may come from anywhere): its default logs no input folders. The loose keywords of
    0.1.0 development (``selection=``, ``workers=``, ``privacy=``, ...) still work instead of
    ``options``, with a DeprecationWarning, until 0.2.

    Raises:
        ModelError: the model cannot be resolved or loaded (nothing runs).
        UnreadableScanError: ``input_root`` is not a directory.
        ConfigError: as :func:`run_cases`.
        BatchInterrupted: SIGINT or SIGTERM came; as :func:`run_cases`, or before the cases
            were found (then nothing ran and no summary was written).
    """
    from medseg.pipeline import load_model

    options = options_from_keywords("run_batch", options, deprecated, _RUN_BATCH_KEYWORDS)
    references = options.references
    output_root = claim_output_root(
        output_root,
        inputs=(
            input_root,
            model,
            None if references is None else references.folder,
            None if references is None else references.agreement,
        ),
    )
    with stop_signals() as stop:
        try:
            with stop.armed():
                ref = resolve_model_ref(model, output_root)
                loaded = load_model(ref.path)  # fail early, before any case, on a bad model
                options = options.with_defaults_from(loaded.config)
                specs = discover_cases(
                    Path(input_root),
                    options.selection,
                    options.settings,
                    salt=load_salt(output_root),
                    privacy=options.privacy,
                )
        except Stop as exc:
            raise BatchInterrupted(exc.signal_number, None, 0) from None
        return run_cases(
            specs,
            output_root,
            ref,
            link_inputs(Path(input_root)),
            options=options,
            source="folder",
            loaded_model=loaded if options.in_this_process else None,
        )
