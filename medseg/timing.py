"""Where a case's time goes: wall-clock seconds per stage of a prediction.

:func:`medseg.pipeline.predict_case` fills a :class:`StageTimes` as it goes; ``volumes.json``,
the batch ledger and ``medseg predict -v`` report it, so a user sees whether a slow case spent
its time reading the series, in the network, or writing the RT-STRUCT. The stages are
:data:`STAGES`; inside :func:`medseg.infer.predict`, ``preprocess`` is building the network's
input (body box, resampling into the model grid, intensity normalisation, window slabs),
``network`` the network's forward passes, and ``postprocess`` everything after them (blending
the windows, resampling back to the scan's grid, argmax, the component clean-up and the
volumes).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

__all__ = ["STAGES", "StageTimes", "format_stage_seconds"]

#: The stages of a prediction, in the order they run.
STAGES = ("load", "preprocess", "network", "postprocess", "rtstruct", "seg", "report")


class StageTimes:
    """Seconds per stage, summed over every time a stage was entered."""

    __slots__ = ("_seconds",)

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        """Count ``seconds`` to ``stage`` (one of :data:`STAGES`)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
        self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        """Count the time spent inside the ``with`` block to ``stage``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def total(self, stage: str) -> float:
        """Seconds counted to ``stage`` so far (0 if never entered)."""
        return self._seconds.get(stage, 0.0)

    def seconds(self) -> dict[str, float]:
        """Stage -> seconds, in :data:`STAGES` order, stages never entered left out, to the
        millisecond."""
        return {s: round(self._seconds[s], 3) for s in STAGES if s in self._seconds}


def format_stage_seconds(seconds: Mapping[str, float]) -> str:
    """One log line: ``load 1.20 s, preprocess 0.31 s, network 8.02 s, ... (total 10.1 s)``."""
    parts = [f"{stage} {value:.2f} s" for stage, value in seconds.items()]
    return ", ".join(parts) + f" (total {sum(seconds.values()):.1f} s)"
