"""The network side of nnU-Net v2's planning: the PlainConvUNet topology for a patch and
spacing, and nnU-Net's memory estimate of that network.

Rewritten from nnunetv2 2.8.1's ``experiment_planning/experiment_planners/network_topology.py``
and dynamic_network_architectures 0.4.4's ``compute_conv_feature_map_size`` because medseg
cannot depend on either (see :mod:`medseg.planning.rules`, which uses them, and
``tests/test_planning_rules.py``, which checks both against nnU-Net itself). Per-axis values
may be in any axis order, as long as all of them share it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg.errors import ConfigError

__all__ = [
    "CONVS_PER_STAGE",
    "MIN_FEATURE_MAP_EDGE",
    "estimate_memory",
    "features_per_stage",
    "pool_and_conv_props",
]

#: ``ExperimentPlanner.UNet_featuremap_min_edge_length``: the bottleneck's smallest edge.
MIN_FEATURE_MAP_EDGE = 4
#: ``UNet_blocks_per_stage_encoder`` / ``_decoder``: convolutions per stage.
CONVS_PER_STAGE = 2
#: nnU-Net's ``get_pool_and_conv_props(..., max_numpool=999999)``: no cap on poolings.
_MAX_NUM_POOL = 999_999


def _pad_shape(shape: Any, must_be_divisible_by: Any) -> np.ndarray:
    """Round each edge up to a multiple (``network_topology.pad_shape``, kept literally: its
    float handling decides shapes that come from a median with a ``.5``)."""
    new_shape = [
        shape[i] + must_be_divisible_by[i] - shape[i] % must_be_divisible_by[i]
        for i in range(len(shape))
    ]
    for i in range(len(shape)):
        if shape[i] % must_be_divisible_by[i] == 0:
            new_shape[i] -= must_be_divisible_by[i]
    return np.array(new_shape).astype(int)


def pool_and_conv_props(
    spacing: Any, patch_size: Any
) -> tuple[list[int], list[list[int]], list[list[int]], tuple[int, ...], np.ndarray]:
    """nnU-Net's ``get_pool_and_conv_props`` (network_topology.py), for one patch and spacing.

    Pools every axis whose feature map is at least 2 x :data:`MIN_FEATURE_MAP_EDGE` and whose
    current spacing is within 2x of the finest such axis, all at once, until none is left (a
    single remaining axis must be at least 3 x the edge); an axis' kernel becomes 3 once its
    spacing is within 2x of the finest; the bottleneck's kernel is 3. Returns the poolings per
    axis, the strides and kernels per stage, the patch padded to the pooling, and that
    multiple.
    """
    dim = len(spacing)
    current_spacing = list(spacing)
    current_size = list(patch_size)
    strides: list[list[int]] = [[1] * dim]
    kernels: list[list[int]] = []
    num_pool = [0] * dim
    kernel = [1] * dim
    while True:
        valid = [i for i in range(dim) if current_size[i] >= 2 * MIN_FEATURE_MAP_EDGE]
        if len(valid) < 1:
            break
        finest = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / finest < 2]
        valid = [i for i in valid if num_pool[i] < _MAX_NUM_POOL]
        if len(valid) == 1 and current_size[valid[0]] < 3 * MIN_FEATURE_MAP_EDGE:
            break
        if len(valid) < 1:
            break
        for d in range(dim):
            if kernel[d] != 3 and current_spacing[d] / min(current_spacing) < 2:
                kernel[d] = 3
        stride = [1] * dim
        for v in valid:
            stride[v] = 2
            num_pool[v] += 1
            current_spacing[v] *= 2
            current_size[v] = np.ceil(current_size[v] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    must_be_divisible_by = 2 ** np.array(num_pool)
    padded = _pad_shape(patch_size, must_be_divisible_by)
    kernels.append([3] * dim)
    return num_pool, strides, kernels, tuple(padded), must_be_divisible_by


def estimate_memory(
    patch_size: tuple[int, ...],
    strides: tuple[tuple[int, ...], ...],
    features: tuple[int, ...],
    num_classes: int,
    convs_per_stage: int = CONVS_PER_STAGE,
) -> int:
    """nnU-Net's memory estimate of a PlainConvUNet for one patch: the number of feature-map
    voxels its convolutions write (``PlainConvUNet.compute_conv_feature_map_size`` of
    dynamic_network_architectures 0.4.4, which nnU-Net's ``static_estimate_VRAM_usage`` calls).

    Encoder stage ``s``: ``convs_per_stage`` convolutions of ``features[s]`` channels at the
    size after its stride. Decoder stage (every stage but the bottleneck): the transposed
    convolution and ``convs_per_stage`` convolutions of that stage's channels, plus the
    ``num_classes`` (labels + background) segmentation output at full resolution only (no
    deep supervision in the estimate). Input channels do not count. Rewritten because medseg
    cannot import the network package; ``patch_size`` and ``strides`` only need one axis order.

    >>> estimate_memory((8, 8, 8), ((1, 1, 1), (2, 2, 2)), (32, 64), num_classes=2)
    91136
    """
    if len(strides) != len(features) or not strides:
        raise ConfigError(
            f"need one stride per stage: {len(strides)} strides, {len(features)} stages"
        )
    sizes = []
    size = list(patch_size)
    for stride in strides:
        size = [edge // step for edge, step in zip(size, stride, strict=True)]
        sizes.append(int(np.prod(size, dtype=np.int64)))
    encoder = sum(convs_per_stage * channels * voxels for channels, voxels in zip(features, sizes))
    decoder = sum((convs_per_stage + 1) * features[s] * sizes[s] for s in range(len(features) - 1))
    return int(encoder + decoder + num_classes * sizes[0])


def features_per_stage(n_stages: int, base: int, most: int) -> tuple[int, ...]:
    """Features per stage (``_features_per_stage`` of ``get_plans_for_configuration``):
    ``base · 2^k``, capped at ``most``.

    >>> features_per_stage(6, 32, 320)
    (32, 64, 128, 256, 320, 320)
    """
    return tuple(min(most, base * 2**k) for k in range(n_stages))
