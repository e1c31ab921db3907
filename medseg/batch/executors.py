"""Batch executors: :func:`run_case`, the per-case function, and the local, process-pool
and Ray runners that run it (see :mod:`medseg.batch` for the design). Ray is imported only
here.

The pool is medseg's own rather than ``concurrent.futures``: the driver talks to each worker
process through its own pipe, so it knows which case each one runs and since when, and can
stop one worker (a case over ``batch.case_timeout_s``, a worker that died) without losing
the cases of the others, or stop them all at once (SIGTERM, Ctrl-C).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

import medseg
from medseg.batch.cases import MANIFEST_NAME, CaseOutcome, CaseStatus, CaseTask, Executor, ModelRef
from medseg.batch.ledger import utc_timestamp
from medseg.batch.options import RunOptions
from medseg.config import BatchConfig
from medseg.errors import CaseTimeoutError
from medseg.io.files import atomic_dir

__all__ = ["Runner", "keep_model", "make_runner", "remove_case_temporaries", "run_case"]

log = logging.getLogger(__name__)

#: Seconds a worker gets to exit after the driver closes its pipe, before it is killed.
_WORKER_EXIT_S = 30.0
#: The signals that stop a batch: the driver handles them, its workers ignore them.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# ---------------------------------------------------------------------------------------------
# the per-case function, run by every executor


_MODELS: dict[ModelRef, Any] = {}


def keep_model(ref: ModelRef, model: Any) -> None:
    """Use ``model`` (already loaded by the caller) for ``ref`` in this process."""
    _MODELS.clear()
    _MODELS[ref] = model


def _model(ref: ModelRef) -> Any:
    """The loaded model, once per process (workers keep it between cases)."""
    if ref not in _MODELS:
        from medseg.pipeline import load_model

        _MODELS.clear()
        _MODELS[ref] = load_model(ref.path)
    return _MODELS[ref]


def run_case(task: CaseTask) -> CaseOutcome:
    """Run one case: predict, export, and rename the complete folder into ``task.out_dir``.

    Never raises for a bad case: the error's class and message are returned, so one bad scan
    (corrupt file, missing slices, out of memory) never stops the batch.
    """
    from medseg.pipeline import predict_case

    start = time.monotonic()
    try:
        model = _model(task.model)
        with atomic_dir(task.out_dir, overwrite=True) as tmp:
            result = predict_case(model, task.input_dir, tmp, overwrite=True)
            manifest = {
                "case_id": task.case_id,
                "fingerprint": task.fingerprint,
                "model_id": task.model.model_id,
                "study_instance_uid": task.study_instance_uid,
                "series_instance_uid": task.series_instance_uid,
                "medseg_version": medseg.__version__,
                "finished_at": utc_timestamp(),
                "volumes_ml": result.volumes_ml,
                "stage_seconds": result.stage_seconds,
            }
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    # The night's run must go on whatever one case raises (MedsegError for bad input,
    # MemoryError, or a bug met only by this scan): the class and message are recorded.
    except Exception as exc:  # noqa: BLE001
        return CaseOutcome(
            task.case_id, CaseStatus.FAILED, time.monotonic() - start, type(exc).__name__, str(exc)
        )
    return CaseOutcome(
        task.case_id,
        CaseStatus.DONE,
        time.monotonic() - start,
        stage_seconds=result.stage_seconds,
    )


# ---------------------------------------------------------------------------------------------
# executors


class Runner(Protocol):
    """What the driver needs of an executor: up to ``capacity`` cases in flight."""

    capacity: int

    def submit(self, task: CaseTask) -> None: ...

    def next_done(self) -> CaseOutcome: ...

    def close(self) -> None:
        """Release the workers once no case is in flight."""

    def abort(self) -> None:
        """Stop now: the cases in flight are abandoned (their processes killed)."""


def remove_case_temporaries(out_dir: Path) -> None:
    """Remove the hidden temporaries (``.<case_id>.*.tmp`` / ``.old``) that a case stopped
    inside :func:`~medseg.io.files.atomic_dir` leaves beside its folder."""
    for path in out_dir.parent.glob(f".{out_dir.name}.*"):
        if path.suffix in (".tmp", ".old") and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


class _LocalRunner:
    """Runs each case in this process when its result is asked for."""

    capacity = 1

    def __init__(self) -> None:
        self._queue: deque[CaseTask] = deque()

    def submit(self, task: CaseTask) -> None:
        self._queue.append(task)

    def next_done(self) -> CaseOutcome:
        return run_case(self._queue.popleft())

    def close(self) -> None:
        self._queue.clear()

    def abort(self) -> None:
        # a case interrupted in this process has left run_case (atomic_dir removed its folder)
        self._queue.clear()


def _die_with_driver(driver_pid: int) -> None:
    """Die with the driver: a killed batch must not leave workers writing case folders."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != driver_pid:  # the driver died before prctl took effect
        os._exit(1)


def _warm(ref: ModelRef) -> None:
    """Load the model before a case's clock starts (a worker's first case)."""
    try:
        _model(ref)
    # run_case loads it again and records what failed, as for any other error of a case
    except Exception:  # noqa: BLE001
        return


def _worker_main(conn: Connection, driver_pid: int) -> None:
    """A pool worker: run the driver's tasks one at a time until it closes the pipe.

    Sends ``("started", case_id)`` once the model is loaded and ``("done", outcome)`` after
    each case. SIGINT and SIGTERM are ignored (from the first instruction when
    :meth:`_PoolRunner._spawn` ran in the main thread): Ctrl-C reaches the terminal's whole
    process group, and a service manager may signal every process of the service, but a
    worker must not die half-way through a case on them; the driver stops its workers itself.
    """
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    _die_with_driver(driver_pid)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        _warm(task.model)
        conn.send(("started", task.case_id))
        conn.send(("done", run_case(task)))


@dataclass(slots=True)
class _Worker:
    process: BaseProcess
    conn: Connection
    task: CaseTask | None = None
    warm: bool = False  # has loaded the model
    submitted: float = 0.0
    started: float | None = None  # when the current case's clock started (time.monotonic)


class _PoolRunner:
    """``workers`` spawned worker processes, each loading the model once (see the module doc).

    With ``timeout_s``, a case still running ``timeout_s`` seconds after its worker started
    it (with the model loaded) has its worker killed and fails with
    :class:`~medseg.errors.CaseTimeoutError`; a worker that dies fails only its own case.
    Either way the case's half-written temporary folder is removed and a new worker takes
    the next case.
    """

    def __init__(self, workers: int, timeout_s: float | None = None) -> None:
        self.capacity = workers
        self._timeout_s = timeout_s
        # spawn, not fork: forking a process that has torch's thread pools can deadlock
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []

    def _spawn(self) -> _Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(theirs, os.getpid()), name="medseg-batch-worker", daemon=True
        )
        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            # an ignored signal stays ignored across exec, and a Python started with SIGINT
            # ignored sets no KeyboardInterrupt handler: the worker ignores both from its
            # first instruction, imports included (one sent to the driver in these few
            # milliseconds is lost)
            previous = {s: signal.signal(s, signal.SIG_IGN) for s in _STOP_SIGNALS}
        try:
            process.start()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        theirs.close()
        worker = _Worker(process, ours)
        self._workers.append(worker)
        if len(self._workers) == 1:
            # workers ignore SIGTERM, so multiprocessing's exit handler (terminate, then join)
            # would wait for ever on one left alive by a driver that failed to close us
            atexit.register(self.abort)
        return worker

    def submit(self, task: CaseTask) -> None:
        idle = [w for w in self._workers if w.task is None]
        worker = idle[0] if idle else self._spawn()
        try:
            worker.conn.send(task)
        except OSError:  # an idle worker died (killed): give the case to a new one
            self._discard(worker)
            worker = self._spawn()
            worker.conn.send(task)
        now = time.monotonic()
        worker.task, worker.submitted = task, now
        worker.started = now if worker.warm else None

    def next_done(self) -> CaseOutcome:
        while True:
            busy = [w for w in self._workers if w.task is not None]
            if not busy:
                raise RuntimeError("next_done() without a case in flight")
            now = time.monotonic()
            wait_s = None
            if self._timeout_s is not None:
                for worker in busy:
                    if worker.started is not None:
                        left = worker.started + self._timeout_s - now
                        if left <= 0:
                            return self._timed_out(worker)
                        wait_s = left if wait_s is None else min(wait_s, left)
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], wait_s)
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    outcome = self._receive(worker)
                    if outcome is not None:
                        return outcome

    def _receive(self, worker: _Worker) -> CaseOutcome | None:
        """The outcome a worker sent, after noting when its case started; ``None`` if none yet."""
        try:
            while worker.conn.poll():
                kind, value = worker.conn.recv()
                if kind == "started":
                    worker.warm = True
                    if worker.started is None:
                        worker.started = time.monotonic()
                else:
                    worker.task, worker.started = None, None
                    outcome: CaseOutcome = value
                    return outcome
        except (EOFError, OSError):
            return self._died(worker)
        return self._died(worker) if not worker.process.is_alive() else None

    def _died(self, worker: _Worker) -> CaseOutcome:
        task = worker.task
        assert task is not None
        worker.process.join(1.0)  # its sentinel fired (or its pipe closed): it is ending
        code = worker.process.exitcode
        self._discard(worker)
        remove_case_temporaries(task.out_dir)
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return CaseOutcome(
            task.case_id,
            CaseStatus.FAILED,
            time.monotonic() - worker.submitted,
            ChildProcessError.__name__,
            f"{task.case_id}: the worker process running this case died ({how}; out of memory?)",
        )

    def _timed_out(self, worker: _Worker) -> CaseOutcome:
        task = worker.task
        assert task is not None and self._timeout_s is not None
        self._discard(worker)
        remove_case_temporaries(task.out_dir)
        return CaseOutcome(
            task.case_id,
            CaseStatus.FAILED,
            time.monotonic() - worker.submitted,
            CaseTimeoutError.__name__,
            f"{task.case_id}: not finished within batch.case_timeout_s = "
            f"{self._timeout_s:g} s; its worker process was stopped",
        )

    def _discard(self, worker: _Worker) -> None:
        """Kill a worker (if still alive) and forget it."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(_WORKER_EXIT_S)
        worker.conn.close()
        self._workers.remove(worker)

    def close(self) -> None:
        atexit.unregister(self.abort)
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + _WORKER_EXIT_S
        for worker in list(self._workers):
            if worker.task is None:
                worker.process.join(max(0.0, deadline - time.monotonic()))
            self._discard(worker)

    def abort(self) -> None:
        atexit.unregister(self.abort)
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.kill()
        for worker in list(self._workers):
            task = worker.task
            self._discard(worker)
            if task is not None:
                remove_case_temporaries(task.out_dir)


class _RayRunner:
    """One Ray task per case; the driver alone writes the ledger."""

    def __init__(self, address: str | None, workers: int, settings: BatchConfig) -> None:
        import ray

        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
            self._started = True
        self._remote = ray.remote(
            num_cpus=settings.cpus_per_case, num_gpus=settings.gpus_per_case, max_retries=0
        )(run_case)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        # queue a little more than the cluster runs at once, so it never idles
        self.capacity = max(1, int(2 * cpus // settings.cpus_per_case))
        self._refs: dict[Any, CaseTask] = {}

    def submit(self, task: CaseTask) -> None:
        self._refs[self._remote.remote(task)] = task

    def next_done(self) -> CaseOutcome:
        ready, _ = self._ray.wait(list(self._refs), num_returns=1)
        task = self._refs.pop(ready[0])
        try:
            return self._ray.get(ready[0])  # type: ignore[no-any-return]
        except self._ray.exceptions.RayError as exc:  # the worker died or the task was lost
            return CaseOutcome(
                task.case_id,
                CaseStatus.FAILED,
                0.0,
                type(exc).__name__,
                f"{task.case_id}: Ray task failed: {exc}",
            )

    def close(self) -> None:
        for ref in self._refs:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._started:
            self._ray.shutdown()

    def abort(self) -> None:
        # best effort: a cancelled task's worker may still be renaming its folder into place
        self.close()


def make_runner(options: RunOptions) -> Runner:
    """The runner of ``options.executor_used`` (``local`` with several workers is a pool);
    with ``settings.case_timeout_s``, ``local`` runs its cases in one worker process, because
    only a process can be stopped safely mid-case."""
    settings = options.settings or BatchConfig()
    executor = options.executor_used
    if executor is Executor.RAY:
        if settings.case_timeout_s is not None:
            log.warning("batch.case_timeout_s is not applied with the Ray executor")
        return _RayRunner(options.ray_address, options.workers, settings)
    if executor is Executor.POOL:
        return _PoolRunner(options.workers, settings.case_timeout_s)
    if settings.case_timeout_s is not None:
        return _PoolRunner(1, settings.case_timeout_s)
    return _LocalRunner()
