"""Models and data samples the tests share: built exactly as the benchmark builds them
(:mod:`iformer_mm.analysis.bench.workloads`), so a test and a benchmark row run the same thing."""
from __future__ import annotations

from typing import Any

from iformer_mm.analysis.bench.workloads import DET_CFG, SEG_CFG, build_mm_model, det_sample, seg_sample

__all__ = ['det_sample', 'mask_rcnn', 'semantic_fpn', 'seg_sample']


def mask_rcnn(impl: str = 'ours') -> Any:
    """The iFormer-S Mask R-CNN of ``configs/detection/mask_rcnn_iformer_s_1x.py`` (random weights,
    no drop path, the backbone as ``impl``), in train mode as mmdet builds it."""
    model = build_mm_model(DET_CFG, impl)
    model.train()
    return model


def semantic_fpn(impl: str = 'ours') -> Any:
    """The iFormer-S Semantic FPN of ``configs/segmentation/fpn_iformer_s_ade20k_80k.py``, in eval mode."""
    return build_mm_model(SEG_CFG, impl).eval()
