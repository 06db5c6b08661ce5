"""Datasets registered in MMSegmentation's ``DATASETS`` (imports mmseg: load it from a config's
``custom_imports``, never from ``import iformer_mm``).

* ``CheckedADE20KDataset`` — ADE20K that names a missing or mismatched annotation up front;
* ``ADEFromCOCODataset`` — the ADE20K-layout dataset painted from COCO
  (:mod:`iformer_mm.datagen.ade_from_coco`), 80 classes, same checks.

The code that *writes* datasets to disk (the demo set, ADE-from-COCO, ImageFolder-from-COCO)
is in :mod:`iformer_mm.datagen` and needs no OpenMMLab package.
"""
from .seg import ADEFromCOCODataset, CheckedADE20KDataset, SegDatasetError, check_seg_layout

__all__ = ['ADEFromCOCODataset', 'CheckedADE20KDataset', 'SegDatasetError', 'check_seg_layout']
