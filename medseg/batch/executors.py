"""Batch executors: :func:`run_case`, the per-case function, and the local, process-pool
and Ray runners that run it (see :mod:`medseg.batch` for the design). Ray is imported only
here."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import time
from collections import deque
from typing import Any, Protocol

import medseg
from medseg.batch.cases import MANIFEST_NAME, CaseOutcome, CaseStatus, CaseTask, Executor, ModelRef
from medseg.batch.ledger import utc_timestamp
from medseg.config import BatchConfig
from medseg.io.files import atomic_dir

__all__ = ["Runner", "keep_model", "make_runner", "run_case"]


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
            }
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    # The night's run must go on whatever one case raises (MedsegError for bad input,
    # MemoryError, or a bug met only by this scan): the class and message are recorded.
    except Exception as exc:  # noqa: BLE001
        return CaseOutcome(task.case_id, CaseStatus.FAILED, time.monotonic() - start,
                           type(exc).__name__, str(exc))
    return CaseOutcome(task.case_id, CaseStatus.DONE, time.monotonic() - start)


# ---------------------------------------------------------------------------------------------
# executors


class Runner(Protocol):
    capacity: int

    def submit(self, task: CaseTask) -> None: ...

    def next_done(self) -> CaseOutcome: ...

    def close(self) -> None: ...


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


def _init_pool_worker() -> None:
    """Die with the driver: a killed batch must not leave workers writing case folders."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _PoolRunner:
    """A spawn-context process pool; a worker that dies fails only the cases it had."""

    def __init__(self, workers: int) -> None:
        self.capacity = workers
        self._workers = workers
        self._pool = self._new_pool()
        self._futures: dict[cf.Future[CaseOutcome], CaseTask] = {}

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        # spawn, not fork: forking a process that has torch's thread pools can deadlock
        return cf.ProcessPoolExecutor(
            self._workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_pool_worker,
        )

    def submit(self, task: CaseTask) -> None:
        self._futures[self._pool.submit(run_case, task)] = task

    def next_done(self) -> CaseOutcome:
        done, _ = cf.wait(self._futures, return_when=cf.FIRST_COMPLETED)
        future = next(iter(done))
        task = self._futures.pop(future)
        try:
            return future.result()
        except cf.process.BrokenProcessPool as exc:
            # a worker was killed (out of memory, signal): the pool is unusable; start another
            pending = list(self._futures.values())
            self._futures.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            for other in pending:
                self.submit(other)
            return CaseOutcome(task.case_id, CaseStatus.FAILED, 0.0, type(exc).__name__,
                               f"{task.case_id}: a worker process died while running this "
                               f"case or another one (killed, e.g. out of memory): {exc}")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


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
            return CaseOutcome(task.case_id, CaseStatus.FAILED, 0.0, type(exc).__name__,
                               f"{task.case_id}: Ray task failed: {exc}")

    def close(self) -> None:
        for ref in self._refs:
            with contextlib.suppress(Exception):
                self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._started:
            self._ray.shutdown()


def make_runner(executor: Executor, workers: int, ray_address: str | None,
            settings: BatchConfig) -> Runner:
    if executor is Executor.RAY:
        return _RayRunner(ray_address, workers, settings)
    if executor is Executor.POOL:
        return _PoolRunner(workers)
    return _LocalRunner()
