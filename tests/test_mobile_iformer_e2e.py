"""End-to-end runs of the Mobile iFormer-M configs (run with --runslow): Mask R-CNN on the tiny
real COCO data and Semantic FPN on the ADE20K-layout data painted from it, through
tools/train.py and tools/test.py exactly as a user would, with the real configs shrunk only in
data size and schedule. The stage-3 maps are not multiples of 16, so the windowed path pads.
"""
from __future__ import annotations

import re
import sys

import pytest

from test_detection_e2e import _run, _write_cfg
from test_segmentation_e2e import ade_dir, metrics, python_tool, write_tiny_config  # noqa: F401 (fixture)

pytest.importorskip('timm.models.iformer')
pytestmark = pytest.mark.slow


def test_mask_rcnn_mobile_iformer_m_trains_then_tests(repo_root, tiny_coco_dir, tmp_path):
    base = repo_root / 'configs' / 'detection' / 'mask_rcnn_mobile_iformer_m_1x.py'
    cfg = tmp_path / 'tiny_mobile_m.py'
    _write_cfg(cfg, tiny_coco_dir, nval=2, base=base)
    wd = tmp_path / 'wd'
    out = _run([sys.executable, repo_root / 'tools' / 'train.py', cfg, '--work-dir', wd], repo_root)
    assert 'Epoch(train) [1][2/2]' in out
    assert re.search(r'loss: \d+\.\d+', out)
    ckpt = wd / 'epoch_1.pth'
    assert ckpt.is_file()
    out = _run([sys.executable, repo_root / 'tools' / 'test.py', cfg, ckpt, '--work-dir', tmp_path / 'test'],
               repo_root)
    for kind in ('bbox', 'segm'):
        assert re.search(rf'{kind}_mAP_copypaste: (\d\.\d{{3}} ){{5}}\d\.\d{{3}}', out), kind


def test_fpn_mobile_iformer_m_trains_then_tests(repo_root, ade_dir, tmp_path):  # noqa: F811
    cfg = write_tiny_config(tmp_path / 'tiny_fpn_mobile_m.py', repo_root, 'fpn_mobile_iformer_m_ade20k_40k.py',
                            ade_dir, iters=2, batch_size=2)
    wd = tmp_path / 'wd'
    res = python_tool(repo_root, 'train.py', str(cfg), '--work-dir', str(wd))
    assert res.returncode == 0, res.log[-4000:]
    assert re.search(r'Iter\(train\) \[2/2\].*loss: \d+\.\d+', res.log)
    ckpt = wd / 'iter_2.pth'
    assert ckpt.is_file()
    res = python_tool(repo_root, 'test.py', str(cfg), str(ckpt), '--work-dir', str(tmp_path / 'test'))
    assert res.returncode == 0, res.log[-4000:]
    metrics(res.log)
