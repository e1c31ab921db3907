"""Self-configuring experiments (``medseg plan``): a dataset fingerprint and the rules of
nnU-Net v2's experiment planner that turn it into an experiment config.

- :mod:`medseg.planning.fingerprint`: what the planner knows of a dataset.
- :mod:`medseg.planning.rules`: nnU-Net v2's 3d_fullres rules (target spacing, normalisation,
  topology, patch and batch from a memory target).
"""
