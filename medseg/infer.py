"""Sliding-window prediction of a label volume from an image volume."""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medseg.errors import InputError
from medseg.model import LoadedModel
from medseg.preprocess import scale_intensity
from medseg.volume import Volume, VolumeKind

__all__ = ["predict"]


def predict(model: LoadedModel, image: Volume) -> Volume:
    """Segment ``image`` with ``model``.

    The model's own intensity window (``model.config.preprocess``) is applied here, so a model
    is always fed the intensities it was trained on: pass the image in Hounsfield units, not
    already scaled. Windows of ``model.config.infer.roi_size`` voxels, overlapping by
    ``overlap`` and blended ``gaussian`` or ``constant``, are run through the network in
    batches of ``sw_batch_size``; images smaller than a window are padded and cropped back.

    Args:
        model: a network with its config, e.g. from :func:`medseg.model.load_checkpoint`.
        image: an ``IMAGE`` volume in HU, array order ``(slice, row, column)``, any size.

    Returns:
        A ``LABELS`` volume of ``uint8`` label values (0 = background, ``c`` =
        ``model.label_names[c]``) on exactly the geometry and source of ``image``.

    Raises:
        InputError: if ``image`` is not an ``IMAGE`` volume or contains NaN/inf.
    """
    if image.kind is not VolumeKind.IMAGE:
        raise InputError(
            f"{image.source.describe()}: prediction needs an image volume, got {image.kind.value}"
        )
    scaled = scale_intensity(image, model.config.preprocess)
    infer = model.config.infer
    network = model.network
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode():
            batch = torch.from_numpy(scaled.array.copy())[None, None].to(device)  # writable copy
            logits = sliding_window_inference(
                inputs=batch,
                roi_size=infer.roi_size,
                sw_batch_size=infer.sw_batch_size,
                predictor=network,
                overlap=infer.overlap,
                mode=infer.blend,
            )
            assert isinstance(logits, torch.Tensor)  # a single tensor in, a single tensor out
            labels = torch.argmax(logits, dim=1)[0].to(torch.uint8).cpu().numpy()
    finally:
        network.train(was_training)
    # with_array keeps geometry and source exactly; argmax indices are the label values.
    return image.with_array(np.asarray(labels), kind=VolumeKind.LABELS)
