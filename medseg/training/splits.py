"""k-fold cross-validation splits, drawn reproducibly from the seed and saved as JSON.

A split file names cases by their ids only (``training_000``), never by patient attributes::

    {"seed": 0, "num_folds": 5, "case_ids": [...],
     "folds": [{"fold": 0, "train": [...], "validation": [...]}, ...]}

Example:
    >>> folds = make_folds([f"case_{i}" for i in range(5)], num_folds=5, seed=0)
    >>> sorted(i for fold in folds for i in fold.validation) == [f"case_{i}" for i in range(5)]
    True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import ConfigError
from medseg.io.files import atomic_path

__all__ = ["Fold", "dataset_fingerprint", "load_folds", "make_folds", "write_folds"]


@dataclass(frozen=True, slots=True)
class Fold:
    """One cross-validation fold.

    Attributes:
        fold: 0-based fold number.
        train: ids of the training cases.
        validation: ids of the held-out cases (disjoint from ``train``).
    """

    fold: int
    train: tuple[str, ...]
    validation: tuple[str, ...]


def dataset_fingerprint(case_ids: Sequence[str]) -> str:
    """SHA-256 (hex) of the sorted case ids: tells runs on the same cases apart from others.

    Example:
        >>> dataset_fingerprint(["b", "a"]) == dataset_fingerprint(["a", "b"])
        True
    """
    return hashlib.sha256("\n".join(sorted(case_ids)).encode()).hexdigest()


def make_folds(case_ids: Sequence[str], num_folds: int, seed: int) -> tuple[Fold, ...]:
    """Split ``case_ids`` into ``num_folds`` folds of near-equal size.

    The ids are sorted, shuffled with ``numpy.random.default_rng(seed)`` and dealt round-robin,
    so the split depends only on the set of ids and the seed, not on their order.

    Raises:
        ConfigError: on duplicate ids, ``num_folds < 2`` or fewer cases than folds.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise ConfigError("case ids for cross-validation must be unique")
    if num_folds < 2:
        raise ConfigError(f"num_folds must be >= 2, got {num_folds}")
    if len(ids) < num_folds:
        raise ConfigError(f"{len(ids)} cases cannot be split into {num_folds} folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    held_out: list[list[str]] = [[] for _ in range(num_folds)]
    for position, index in enumerate(order):
        held_out[position % num_folds].append(ids[int(index)])
    return tuple(
        Fold(
            fold=k,
            train=tuple(i for i in ids if i not in set(held_out[k])),
            validation=tuple(sorted(held_out[k])),
        )
        for k in range(num_folds)
    )


def write_folds(path: Path, folds: Sequence[Fold], seed: int) -> Path:
    """Write the split file atomically; returns ``path``."""
    case_ids = sorted({i for fold in folds for i in (*fold.train, *fold.validation)})
    payload = {
        "seed": seed,
        "num_folds": len(folds),
        "case_ids": case_ids,
        "folds": [
            {"fold": f.fold, "train": list(f.train), "validation": list(f.validation)}
            for f in folds
        ],
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def load_folds(path: Path) -> tuple[Fold, ...]:
    """Read a split file written by :func:`write_folds`.

    Raises:
        ConfigError: if the file is unreadable or malformed.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return tuple(
            Fold(int(f["fold"]), tuple(map(str, f["train"])), tuple(map(str, f["validation"])))
            for f in raw["folds"]
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable split file ({exc})") from exc
