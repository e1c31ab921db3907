"""Training: datalists and DICOM sources, patches, splits, cross-validation, the loop itself.

In reading order: :mod:`~medseg.training.data` (Decathlon datalists) and
:mod:`~medseg.training.datasets` (DICOM + RT-STRUCT folders) give labelled cases;
:mod:`~medseg.training.patches` puts them on the model's grid and samples patches;
:mod:`~medseg.training.splits` and :mod:`~medseg.training.crossval` draw and run the k folds;
:mod:`~medseg.training.train` is the loop, :mod:`~medseg.training.progress` its feedback and
:mod:`~medseg.training.distributed` its torchrun side. Import the modules themselves (this
package imports none of them, so importing it loads no torch).
"""

__all__: list[str] = []
