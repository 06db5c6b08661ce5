"""MMSegmentation-side modules of iformer_mm (imports mmseg: load it from a config's
``custom_imports``, never from ``import iformer_mm``).

Registers in mmseg's ``DATASETS``:

* ``CheckedADE20KDataset`` — ADE20K that names a missing or mismatched annotation up front;
* ``ADEFromCOCODataset`` — the ADE20K-layout dataset painted from COCO
  (:mod:`iformer_mm.datasets.ade_from_coco`), 80 classes, same checks.
"""
from .datasets import ADEFromCOCODataset, CheckedADE20KDataset, SegDatasetError, check_seg_layout

__all__ = ['ADEFromCOCODataset', 'CheckedADE20KDataset', 'SegDatasetError', 'check_seg_layout']
