"""End-to-end runs of the MetaFormer baseline configs through tools/train.py and tools/test.py.

One CAFormer and one PoolFormer config each for Mask R-CNN on tiny_coco (real COCO images) and
Semantic FPN on the ADE20K-layout data painted from it; the real configs are inherited by the
same small test configs the iFormer end-to-end tests use (256 px / crop 128, a few iterations,
no ImageNet weights). Marked slow (run with --runslow).
"""
from __future__ import annotations

import re
import sys

import pytest

from test_detection_e2e import REPO, _ckpt_meta, _run, _write_cfg
from test_segmentation_e2e import ade_dir, metrics, python_tool, write_tiny_config  # noqa: F401 (fixture)

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')
pytestmark = pytest.mark.slow


@pytest.mark.parametrize('config', ['mask_rcnn_caformer_s18_1x.py', 'mask_rcnn_poolformer_s12_1x.py'])
def test_mask_rcnn_trains_then_tests(config, tiny_coco_dir, tmp_path):
    cfg = tmp_path / 'tiny.py'
    _write_cfg(cfg, tiny_coco_dir, nval=2, base=REPO / 'configs' / 'detection' / config)
    wd = tmp_path / 'wd'
    out = _run([sys.executable, REPO / 'tools' / 'train.py', cfg, '--work-dir', wd], REPO)
    assert 'Epoch(train) [1][2/2]' in out
    assert re.search(r'loss: \d+\.\d+', out) and 'nan' not in out.split('Epoch(train)')[-1]
    ckpt = wd / 'epoch_1.pth'
    assert ckpt.is_file() and _ckpt_meta(ckpt)['iter'] == 2
    out = _run([sys.executable, REPO / 'tools' / 'test.py', cfg, ckpt, '--work-dir', tmp_path / 'test'], REPO)
    for kind in ('bbox', 'segm'):
        assert re.search(rf'{kind}_mAP_copypaste: (\d\.\d{{3}} ){{5}}\d\.\d{{3}}', out), kind


@pytest.mark.parametrize('config', ['fpn_caformer_s18_ade20k_80k.py', 'fpn_poolformer_s12_ade20k_40k.py'])
def test_semantic_fpn_trains_then_tests(config, repo_root, ade_dir, tmp_path):  # noqa: F811
    cfg = write_tiny_config(tmp_path / 'fpn_tiny.py', repo_root, config, ade_dir, iters=4)
    work = tmp_path / 'work'
    res = python_tool(repo_root, 'train.py', str(cfg), '--work-dir', str(work))
    assert res.returncode == 0, res.log[-4000:]
    assert 'Iter(train) [4/4]' in res.log
    ckpt = work / 'iter_4.pth'
    assert ckpt.is_file()
    res = python_tool(repo_root, 'test.py', str(cfg), str(ckpt), '--work-dir', str(work))
    assert res.returncode == 0, res.log[-4000:]
    metrics(res.log)
    assert 'per class results' in res.log
