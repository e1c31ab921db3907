"""The parts of nnU-Net's augmentation set that MONAI has no transform for, as MONAI dictionary
transforms; :func:`medseg.training.patches.augmentation` composes them with MONAI's own.

Each works on one patch ``{"image": (1, slice, row, column) float32, "label": (1, slice, row,
column) int}`` and is seeded by ``Compose.set_random_state`` like any MONAI transform:

- :class:`RandRotateScaled`: nnU-Net's ``SpatialTransform``. MONAI's ``RandAffined`` draws
  rotation and scaling together with one probability and each axis' scale on its own;
  nnU-Net rotates with one probability and scales with another, by one factor for every axis.
  The draws are here; the resampling is MONAI's ``Affine``, once for both.
- :class:`SlicesAsChannelsd`: nnU-Net's dummy 2D augmentation (``Convert3DTo2DTransform``):
  the slices become channels of a 2D image, so a 2D transform acts within each slice and no
  slice is ever mixed with another.
- :class:`RandGammad`: MONAI's ``RandAdjustContrastd`` (gamma, ``invert_image``,
  ``retain_stats`` are nnU-Net's ``GammaTransform``) with nnU-Net's draw of gamma
  (``BGContrast``: below 1 half the time), where MONAI draws uniformly over the range.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai import transforms as mt

__all__ = ["RandGammad", "RandRotateScaled", "SlicesAsChannelsd"]


class RandRotateScaled(mt.RandomizableTransform, mt.MapTransform):
    """Rotation with probability ``rotation_probability`` by angles from ``U(-max_degrees,
    max_degrees)`` about each axis (one angle in 2D), and, independently, scaling with
    probability ``scaling_probability`` by one factor from ``U(*scale_range)`` for every axis,
    in one resampling (MONAI ``Affine``; zeros outside the patch, as nnU-Net pads).

    A factor above 1 samples a larger field of view (structures look smaller), as nnU-Net's
    ``scaling`` and MONAI's ``scale_params``.

    Attributes:
        angles_rad: the angles of the last call (zeros when it did not rotate).
        factor: the scale factor of the last call (1 when it did not scale).
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        modes: Sequence[str],
        *,
        spatial_dims: int,
        rotation_probability: float,
        max_degrees: float,
        scaling_probability: float,
        scale_range: tuple[float, float],
    ) -> None:
        mt.MapTransform.__init__(self, keys)
        mt.RandomizableTransform.__init__(self, prob=1.0)
        self.modes = tuple(modes)
        self.spatial_dims = spatial_dims
        self.rotation_probability = rotation_probability
        self.max_radians = math.radians(max_degrees)
        self.scaling_probability = scaling_probability
        self.scale_range = scale_range
        self.angles_rad: tuple[float, ...] = (0.0,) * self._n_angles
        self.factor = 1.0

    @property
    def _n_angles(self) -> int:
        return 1 if self.spatial_dims == 2 else 3

    def randomize(self, data: Any = None) -> None:
        rotate = self.R.uniform() < self.rotation_probability
        scale = self.R.uniform() < self.scaling_probability
        limit = self.max_radians
        self.angles_rad = (
            tuple(float(a) for a in self.R.uniform(-limit, limit, self._n_angles))
            if rotate
            else (0.0,) * self._n_angles
        )
        self.factor = float(self.R.uniform(*self.scale_range)) if scale else 1.0
        self._do_transform = rotate or scale

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        out = dict(data)
        if not self._do_transform:
            return out
        affine = mt.Affine(
            rotate_params=self.angles_rad[0] if self.spatial_dims == 2 else self.angles_rad,
            scale_params=(self.factor,) * self.spatial_dims,
            padding_mode="zeros",
            image_only=True,
        )
        for key, mode in zip(self.keys, self.modes, strict=True):
            out[key] = affine(out[key], mode=mode)
        return out


class SlicesAsChannelsd(mt.Randomizable, mt.MapTransform):
    """Apply a 2D dictionary transform to every slice alike: ``(1, slice, row, column)`` arrays
    become ``(slice, row, column)`` 2D images with one channel per slice, and back.

    Why not a 3D transform that leaves axis 0 alone: interpolating on a 3D grid may still mix
    neighbouring slices by rounding; a 2D transform cannot (nnU-Net's
    ``Convert3DTo2DTransform`` does the same).
    """

    def __init__(self, keys: Sequence[Hashable], transform: Any) -> None:
        mt.MapTransform.__init__(self, keys)
        self.transform = transform

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> SlicesAsChannelsd:
        self.transform.set_random_state(seed=seed, state=state)
        return self

    def randomize(self, data: Any) -> None:  # the wrapped transform draws its own values
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        shapes = {key: out[key].shape for key in self.keys}
        for key, shape in shapes.items():
            out[key] = out[key].reshape(shape[1:])
        out = dict(self.transform(out))
        for key, shape in shapes.items():
            # a plain array: MONAI metadata of the 2D images would tell later transforms 2D
            out[key] = np.asarray(out[key]).reshape(shape)
        return out


class _SplitGamma(mt.RandAdjustContrast):
    """MONAI's gamma with nnU-Net's draw (``BGContrast``) when the range straddles 1."""

    def randomize(self, data: Any = None) -> None:
        mt.RandomizableTransform.randomize(self, None)
        if not self._do_transform:
            return
        low, high = self.gamma
        if low < 1.0 < high:
            below = self.R.uniform() < 0.5
            self.gamma_value = float(
                self.R.uniform(low, 1.0) if below else self.R.uniform(1.0, high)
            )
        else:
            self.gamma_value = float(self.R.uniform(low, high))


class RandGammad(mt.RandAdjustContrastd):
    """nnU-Net's ``GammaTransform`` with ``p_retain_stats=1``: MONAI ``RandAdjustContrastd``
    with ``retain_stats`` (and ``invert_image`` for the inverted variant), gamma drawn from
    ``U(low, 1)`` or ``U(1, high)`` with equal probability when ``low < 1 < high``, else from
    ``U(low, high)``. The last gamma drawn is ``adjuster.gamma_value``.
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        *,
        prob: float,
        gamma: tuple[float, float],
        invert_image: bool,
    ) -> None:
        super().__init__(keys, prob=prob, gamma=gamma, invert_image=invert_image, retain_stats=True)
        self.adjuster = _SplitGamma(
            gamma=gamma, prob=1.0, invert_image=invert_image, retain_stats=True
        )
