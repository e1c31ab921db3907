"""Synthetic data made by medseg itself: phantoms with known answers, and the demo.

:mod:`~medseg.synthetic.phantom` makes seeded chest-like CT series with spherical tumours,
:mod:`~medseg.synthetic.phantom_oar` CT-like images from real organ label maps, and
:mod:`~medseg.synthetic.demo` runs the whole pipeline on phantoms (``medseg demo``). They serve
the demo and property tests; they never replace the real-data tests.
"""

__all__: list[str] = []
