"""How a batch runs its cases: :class:`RunOptions`, the one set of run-wide options that
:func:`~medseg.batch.run_batch`, :func:`~medseg.batch.run_cases`,
:func:`~medseg.batch.orthanc.run_pacs` and :func:`~medseg.batch.listener.listen` take (see
:mod:`medseg.batch` for the design)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medseg.batch.cases import BatchProgress, Executor
from medseg.config import BatchConfig, ExperimentConfig, PrivacyConfig, SeriesSelection
from medseg.errors import ConfigError

if TYPE_CHECKING:
    from medseg.batch.references import ReferenceOptions

__all__ = ["RunOptions", "options_from_keywords"]


@dataclass(frozen=True, slots=True)
class RunOptions:
    """The options of a run, the same for a folder batch, a PACS run and the listener.

    Attributes:
        selection: the series selection rules; ``None``: the model's config
            (``series_selection``).
        settings: batch settings (fingerprint mode, time limits, Ray resources); ``None``: the
            model's config (``batch``).
        privacy: what logs and messages may name (``privacy.log_identifiers``: input folders,
            SeriesDescription). Never taken from the model's config, because a model may come
            from anywhere: the default names neither.
        executor: ``local`` (this process; ``workers > 1`` makes it a pool), ``pool`` or
            ``ray`` (an :class:`~medseg.batch.Executor` or its name).
        workers: processes of the pool; with Ray, the CPUs of a local instance it starts.
        retry_failed: run failed cases again even when their input did not change.
        ray_address: the Ray cluster to join (``executor`` ``ray`` only); ``None``: start a
            local instance.
        progress: called after each case with the counts so far (in the driver's process).
        references: compare the predictions with reference RT-STRUCTs once the cases are
            settled (:class:`~medseg.batch.references.ReferenceOptions`; folder batches
            only): ``OUTPUT_ROOT/evaluation/`` and the summary page get the agreement.

    Raises:
        ConfigError: a field of the wrong type, ``workers`` < 1, an unknown executor, or a
            ``ray_address`` without the Ray executor; the one-line message names the field.

    Example:
        >>> RunOptions(executor="pool", workers=4).executor
        <Executor.POOL: 'pool'>
        >>> RunOptions(workers=0)
        Traceback (most recent call last):
        ...
        medseg.errors.ConfigError: workers must be an integer >= 1, got 0
    """

    selection: SeriesSelection | None = None
    settings: BatchConfig | None = None
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    executor: Executor = Executor.LOCAL
    workers: int = 1
    retry_failed: bool = False
    ray_address: str | None = None
    progress: Callable[[BatchProgress], None] | None = None
    references: ReferenceOptions | None = None

    def __post_init__(self) -> None:
        for name, kind in (
            ("selection", SeriesSelection),
            ("settings", BatchConfig),
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise _field_error(name, f"a {kind.__name__} or None", value)
        if not isinstance(self.privacy, PrivacyConfig):
            raise _field_error("privacy", "a PrivacyConfig", self.privacy)
        try:
            executor = Executor(self.executor)
        except ValueError:
            names = ", ".join(e.value for e in Executor)
            raise _field_error("executor", f"one of {names}", self.executor) from None
        object.__setattr__(self, "executor", executor)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise _field_error("workers", "an integer >= 1", self.workers)
        if not isinstance(self.retry_failed, bool):
            raise _field_error("retry_failed", "True or False", self.retry_failed)
        if self.ray_address is not None:
            if not isinstance(self.ray_address, str) or not self.ray_address.strip():
                raise _field_error("ray_address", "a Ray address or None", self.ray_address)
            if executor is not Executor.RAY:
                # the address is not shown: a cluster's address may carry a token
                raise ConfigError(
                    f"ray_address is set but executor is {executor.value!r}: "
                    "a Ray cluster is joined only with executor 'ray'"
                )
        if self.progress is not None and not callable(self.progress):
            raise _field_error("progress", "a callable or None", self.progress)
        if self.references is not None:
            from medseg.batch.references import ReferenceOptions

            if not isinstance(self.references, ReferenceOptions):
                raise _field_error("references", "a ReferenceOptions or None", self.references)

    @property
    def executor_used(self) -> Executor:
        """The executor the cases run on: ``local`` with ``workers > 1`` is a pool."""
        if self.executor is Executor.LOCAL and self.workers > 1:
            return Executor.POOL
        return self.executor

    @property
    def in_this_process(self) -> bool:
        """True when the cases run in the calling process (``local``, one worker), which
        then reuses a model it has already loaded."""
        return self.executor_used is Executor.LOCAL

    def with_defaults_from(self, config: ExperimentConfig) -> RunOptions:
        """These options with ``selection`` and ``settings`` taken from ``config`` (the
        model's) where they are ``None``; ``privacy`` is never taken from it."""
        return dataclasses.replace(
            self,
            selection=config.series_selection if self.selection is None else self.selection,
            settings=config.batch if self.settings is None else self.settings,
        )


def _field_error(name: str, expected: str, value: Any) -> ConfigError:
    shown = repr(value) if isinstance(value, str | int | float | bool) else type(value).__name__
    return ConfigError(f"{name} must be {expected}, got {shown}")


def options_from_keywords(
    function: str,
    options: RunOptions | None,
    keywords: dict[str, Any],
    accepted: Collection[str],
) -> RunOptions:
    """``options``, or the :class:`RunOptions` that the loose keyword arguments of 0.1.0
    development (``workers=2``, ``settings=...``) describe, with a DeprecationWarning; those
    arguments are removed in 0.2.

    Raises:
        TypeError: a keyword ``function`` never took, or both ``options`` and old keywords,
            as Python says of a bad call.
    """
    if not keywords:
        return RunOptions() if options is None else options
    unknown = sorted(set(keywords) - set(accepted))
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
    names = ", ".join(f"{k}=" for k in sorted(keywords))
    if options is not None:
        raise TypeError(f"{function}() takes options= or the old {names}, not both")
    warnings.warn(
        f"{function}({names}) is deprecated and removed in 0.2: pass options=RunOptions(...)",
        DeprecationWarning,
        stacklevel=3,
    )
    if "privacy" in keywords and keywords["privacy"] is None:  # the old default
        keywords = {**keywords, "privacy": PrivacyConfig()}
    return RunOptions(**keywords)
