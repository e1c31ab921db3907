"""Training feedback without torch: progress bars (or log lines) and the curves PNG.

:func:`medseg.training.train.train` reports through :class:`Progress` and plots its history with
:func:`plot_curves`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from medseg.io.files import atomic_path

if TYPE_CHECKING:
    from medseg.training.train import EpochRecord

__all__ = ["Progress", "plot_curves", "progress_bar"]

_log = logging.getLogger("medseg.training.train")


def plot_curves(history: Sequence[EpochRecord], path: Path) -> Path:
    """Loss, learning rate and validation Dice per label against the epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r.epoch for r in history]
    figure, (loss_axis, dice_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [r.train_loss for r in history], label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    lr_axis = loss_axis.twinx()
    lr_axis.plot(epochs, [r.learning_rate for r in history], color="grey", linestyle=":")
    lr_axis.set_ylabel("learning rate")
    validated = [r for r in history if r.val_dice is not None]
    for name in validated[0].val_dice_per_label if validated else ():
        dice_axis.plot(
            [r.epoch for r in validated],
            [r.val_dice_per_label[name] for r in validated],
            marker="o",
            label=name,
        )
    dice_axis.set_xlabel("epoch")
    dice_axis.set_ylabel("validation Dice")
    dice_axis.set_ylim(0.0, 1.0)
    if validated:
        dice_axis.legend(fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------
# progress


class Progress:
    """Epoch and step progress bars on a terminal (rich); one log line per epoch otherwise."""

    def __init__(self, enabled: bool | None, epochs: int, steps: int, done: int) -> None:
        self._bars: Any = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._epochs = self._bars.add_task("epochs", total=epochs, completed=done, info="")
        self._steps = self._bars.add_task("steps", total=steps, info="")

    def __enter__(self) -> Self:
        if self._bars is not None:
            self._bars.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bars is not None:
            self._bars.stop()

    def step(self, loss: float) -> None:
        """One optimiser step done with this loss."""
        if self._bars is not None:
            self._bars.update(self._steps, advance=1, info=f"loss {loss:.4f}")

    def epoch_done(self, summary: str) -> None:
        """One epoch done: log ``summary`` and advance the epoch bar."""
        _log.info("%s", summary)
        if self._bars is not None:
            self._bars.update(self._epochs, advance=1, info=summary.split(": ", 1)[-1])
            self._bars.reset(self._steps)


def progress_bar(enabled: bool | None, epochs: int, steps: int, done: int) -> Progress:
    return Progress(enabled, epochs, steps, done)
