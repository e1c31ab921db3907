"""Derive medseg's default H&N surface-Dice tolerances from two experts' contours.

Usage: .venv/bin/python scripts/derive_tolerances.py [--data ROOT]

For every organ of ``hn-oar-labels`` (the DeepMind H&N validation scans, each contoured by a
radiographer and an arbitrating oncologist; Nikolov et al. 2021, CC BY 4.0) it computes the
inter-observer HD95 of each scan (:func:`medseg.metrics.compute_metrics`, ``surface-distance``
definitions) and prints, per organ (left and right pooled), the median over the scans: the
distance within which 95 % of both experts' surfaces lie on the median scan. This is how
Nikolov et al. set their organ-specific tolerances (the inter-observer variation of the organ);
their own values came from other scans and annotators. ``medseg.tolerances.HN_OAR_TOLERANCES_MM``
holds the printed table, and ``tests/test_tolerances.py`` recomputes it from the data.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medseg.tolerances import derive_tolerances


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("MEDSEG_TEST_DATA") or str(ROOT.parent / "shared" / "data")
    parser.add_argument("--data", type=Path, default=Path(default))
    args = parser.parse_args(argv)
    table, pairs = derive_tolerances(args.data / "hn-oar-labels")
    print(f"{'TG-263 name':18s} {'pairs':>5s} {'tolerance mm':>12s}")
    for name, mm in table.items():
        print(f"{name:18s} {pairs[name]:5d} {mm:12.2f}")
    print("\nHN_OAR_TOLERANCES_MM = {")
    for name, mm in table.items():
        print(f'    "{name}": {mm:.2f},')
    print("}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
