"""Self-configuring experiments (``medseg plan``): a dataset fingerprint and the rules of
nnU-Net v2's experiment planner that turn it into an experiment config.

- :mod:`medseg.planning.fingerprint`: what the planner knows of a dataset, and
  ``compute_fingerprint`` (nnU-Net v2's fingerprint of labelled volumes).
- :mod:`medseg.planning.datasets`: ``fingerprint_dataset`` of the DATA ``medseg plan`` takes
  (an nnU-Net dataset.json, a medseg datalist, an experiment config with ``data.dicom_root``).
- :mod:`medseg.planning.rules`: nnU-Net v2's 3d_fullres rules (target spacing, normalisation,
  topology, patch and batch from a memory target).
"""

__all__: list[str] = []
