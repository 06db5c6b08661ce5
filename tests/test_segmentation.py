"""Segmentation: the ADE-layout dataset builder, the folder checks, the configs and the models.

Fast tests (no training): run by default. End-to-end runs are in test_segmentation_e2e.py.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from _subprocess import env_with_repo

from iformer_mm.datagen.ade_from_coco import COCO_CLASSES, build_ade_from_coco, paint_label_map

SEG_CONFIGS = {
    ('fpn', 'small'): 'fpn_iformer_s_ade20k_80k.py',
    ('fpn', 'base'): 'fpn_iformer_b_ade20k_80k.py',
    ('fpn', 'large'): 'fpn_iformer_l_ade20k_80k.py',
    ('upernet', 'small'): 'upernet_iformer_s_ade20k_160k.py',
    ('upernet', 'base'): 'upernet_iformer_b_ade20k_160k.py',
    ('upernet', 'large'): 'upernet_iformer_l_ade20k_160k.py',
}
EMBED_DIMS = {'small': [96, 192, 320, 384], 'base': [96, 192, 384, 512], 'large': [96, 192, 448, 640]}


@pytest.fixture(scope='module')
def ade_dir(tiny_coco_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('ade_from_coco')
    build_ade_from_coco(tiny_coco_dir, out, overwrite=True)
    return out


def _load_cfg(repo_root: Path, name: str):
    from mmengine.config import Config
    return Config.fromfile(str(repo_root / 'configs' / 'segmentation' / name))


def _build(cfg_model):
    pytest.importorskip('mmseg')
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    return MODELS.build(cfg_model)


# ------------------------------------------------------------------ dataset builder
def test_builder_writes_ade20k_layout_with_matching_label_maps(ade_dir, tiny_coco_dir):
    """Every COCO image becomes an ADE20K-layout pair of equal size with 0..80 labels."""
    import json
    sizes = set()
    for coco_split, ade_split in (('train2017', 'training'), ('val2017', 'validation')):
        coco = json.loads((tiny_coco_dir / 'annotations' / f'instances_{coco_split}.json').read_text())
        imgs = sorted((ade_dir / 'images' / ade_split).glob('*.jpg'))
        labels = sorted((ade_dir / 'annotations' / ade_split).glob('*.png'))
        assert len(imgs) == len(coco['images']) == len(labels)
        assert [p.stem for p in imgs] == [p.stem for p in labels]
        for img, lab in zip(imgs, labels):
            # the photo is copied unchanged, byte for byte
            assert img.read_bytes() == (tiny_coco_dir / 'images' / coco_split / img.name).read_bytes()
            with Image.open(img) as a, Image.open(lab) as b:
                assert a.size == b.size and b.mode == 'L'
                sizes.add(a.size)
                values = np.unique(np.asarray(b))
            assert values.min() >= 0 and values.max() <= len(COCO_CLASSES)
    # real photos of both orientations: non-square, portrait and landscape
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)


def test_builder_paints_categories_and_keeps_small_objects_on_top():
    """Label = COCO category's index + 1, background 0, smaller instances painted last."""
    big = dict(id=1, category_id=62, area=400.0, iscrowd=0,  # chair -> label 57
               segmentation=[[0, 0, 20, 0, 20, 20, 0, 20]])
    small = dict(id=2, category_id=1, area=16.0, iscrowd=0,  # person -> label 1
                 segmentation=[[5, 5, 9, 5, 9, 9, 5, 9]])
    # uncompressed RLE (COCO's crowd format), column-major: 3 background pixels then 4 foreground
    crowd = dict(id=3, category_id=3, area=4.0, iscrowd=1,  # car -> label 3
                 segmentation=dict(size=[30, 30], counts=[30 * 25 + 3, 4, 30 * 30]))
    cat_to_label = {62: COCO_CLASSES.index('chair') + 1, 1: 1, 3: 3}
    label = paint_label_map([small, big, crowd], 30, 30, cat_to_label)
    assert label.shape == (30, 30) and label.dtype == np.uint8
    assert label[2, 2] == 57 and label[15, 15] == 57  # inside the chair only
    assert label[7, 7] == 1  # the person is drawn over the larger chair
    assert label[25, 25] == 0  # nothing annotated there
    assert (label[3:7, 25] == 3).all() and label[2, 25] == 0 and label[7, 25] == 0


def test_builder_refuses_to_overwrite_and_cli_runs(tiny_coco_dir, tmp_path, repo_root):
    out = tmp_path / 'ade'
    res = subprocess.run([sys.executable, str(repo_root / 'tools/dataset_converters/ade_from_coco.py'),
                          str(tiny_coco_dir), str(out), '--max-images', '2'],
                         capture_output=True, text=True, timeout=120, env=env_with_repo())
    assert res.returncode == 0, res.stderr
    assert 'training: 2 images' in res.stdout
    assert len(list((out / 'annotations' / 'validation').glob('*.png'))) == 2
    with pytest.raises(FileExistsError, match='overwrite'):
        build_ade_from_coco(tiny_coco_dir, out)
    with pytest.raises(FileNotFoundError, match='COCO-layout'):
        build_ade_from_coco(tmp_path / 'nowhere', tmp_path / 'x')


# ------------------------------------------------------------------ folder checks
def _dataset(root: Path, **kw):
    pytest.importorskip('mmseg')
    from mmengine.registry import init_default_scope
    import iformer_mm.datasets  # noqa: F401  (registers the datasets, as custom_imports does)
    from mmseg.registry import DATASETS
    init_default_scope('mmseg')
    return DATASETS.build(dict(type='ADEFromCOCODataset', data_root=str(root),
                               data_prefix=dict(img_path='images/validation',
                                                seg_map_path='annotations/validation'),
                               pipeline=[], **kw))


def test_checked_dataset_loads_a_good_folder(ade_dir):
    ds = _dataset(ade_dir)
    assert len(ds) == 6
    assert ds.metainfo['classes'] == COCO_CLASSES and ds.metainfo['reduce_zero_label'] is True


def test_checked_dataset_names_missing_root_and_missing_label(ade_dir, tmp_path):
    from iformer_mm.datasets import SegDatasetError
    with pytest.raises(SegDatasetError, match=r'data_root .*does not exist.*data_root=PATH'):
        _dataset(tmp_path / 'no_such_dataset')
    broken = tmp_path / 'broken'
    shutil.copytree(ade_dir, broken)
    victim = sorted((broken / 'annotations' / 'validation').glob('*.png'))[0]
    victim.unlink()
    with pytest.raises(SegDatasetError) as err:
        _dataset(broken)
    msg = str(err.value)
    assert '1 image(s)' in msg and victim.name in msg and 'Fix:' in msg


def test_checked_dataset_names_size_mismatch_and_rgb_labels(ade_dir, tmp_path):
    from iformer_mm.datasets import SegDatasetError
    broken = tmp_path / 'broken'
    shutil.copytree(ade_dir, broken)
    labels = sorted((broken / 'annotations' / 'validation').glob('*.png'))
    with Image.open(labels[0]) as lab:
        w, h = lab.size
        lab.resize((w // 2, h // 2), Image.NEAREST).save(labels[0])
    with Image.open(labels[1]) as lab:
        lab.convert('RGB').save(labels[1])
    with pytest.raises(SegDatasetError) as err:
        _dataset(broken)
    msg = str(err.value)
    assert f'is {w}x{h}' in msg and f'is {w // 2}x{h // 2}' in msg and labels[0].name in msg
    assert 'mode RGB' in msg and labels[1].name in msg


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize('key', sorted(SEG_CONFIGS))
def test_config_inherits_mmseg_and_matches_the_paper_setup(repo_root, key):
    head, arch = key
    name = SEG_CONFIGS[key]
    text = (repo_root / 'configs' / 'segmentation' / name).read_text()
    cfg = _load_cfg(repo_root, name)
    assert cfg.custom_imports['imports'] == ['iformer_mm', 'iformer_mm.datasets']
    assert cfg.default_scope == 'mmseg'
    if arch == 'small':  # the S configs inherit mmseg's own bases, the others the S config
        assert f"'mmseg::_base_/models/{head}_r50.py'" in text
        assert "'./_base_/iformer_ade20k.py'" in text  # which inherits mmseg's ADE20K data
        shared = (repo_root / 'configs' / 'segmentation' / '_base_' / 'iformer_ade20k.py').read_text()
        assert "'mmseg::_base_/datasets/ade20k.py'" in shared
    bb = cfg.model.backbone
    assert bb.type == 'iformer_mm.IFormer' and bb.arch == arch
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=f'checkpoints/iformer_{arch}.pth')
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    assert cfg.model.decode_head.num_classes == 150
    assert cfg.train_dataloader.batch_size == 2  # x 8 GPUs = 16 images per batch
    assert cfg.crop_size == (512, 512) and cfg.model.data_preprocessor.size == (512, 512)
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_dataloader.dataset.type == 'CheckedADE20KDataset'
    opt = cfg.optim_wrapper.optimizer
    if head == 'fpn':
        assert cfg.model.neck.in_channels == EMBED_DIMS[arch]
        assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 2e-4, 1e-4)
        assert cfg.train_cfg.max_iters == 80000
        assert [s.type for s in cfg.param_scheduler] == ['PolyLR']
    else:
        assert cfg.model.decode_head.in_channels == EMBED_DIMS[arch]
        assert cfg.model.decode_head.channels == 512
        aux = cfg.model.auxiliary_head
        assert (aux.in_index, aux.in_channels, aux.loss_decode.loss_weight) == (2, EMBED_DIMS[arch][2], 0.4)
        assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 6e-5, 0.01)
        assert cfg.train_cfg.max_iters == 160000
        warmup, poly = cfg.param_scheduler
        assert (warmup.type, warmup.end, poly.type, poly.begin, poly.end) == \
            ('LinearLR', 1500, 'PolyLR', 1500, 160000)
    # --tta: 6 scales x 2 flips around the (2048, 512) test scale
    assert cfg.tta_model.type == 'SegTTAModel'
    scales, flips = cfg.tta_pipeline[1].transforms[:2]
    assert [t.scale for t in scales] == [(1024, 256), (1536, 384), (2048, 512), (2560, 640),
                                         (3072, 768), (3584, 896)]
    assert [t.prob for t in flips] == [0., 1.]


@pytest.mark.parametrize('name, params_m', [('fpn_iformer_s_ade20k_80k.py', 23.74),
                                            ('upernet_iformer_s_ade20k_160k.py', 49.17)])
def test_small_models_have_the_papers_parameter_count(repo_root, name, params_m):
    """Paper: Semantic FPN iFormer-S 24 M, UperNet iFormer-S 49 M (reference 23.74 / 49.17 M)."""
    model = _build(_load_cfg(repo_root, name).model)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.005)


def test_missing_pretrained_checkpoint_is_a_clear_error(repo_root, tmp_path):
    from iformer_mm.pretrained import CheckpointError
    cfg = _load_cfg(repo_root, 'fpn_iformer_s_ade20k_80k.py')
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'iformer_small.pth')
    model = _build(cfg.model)
    with pytest.raises(CheckpointError, match='iformer_small.pth'):
        model.init_weights()


# ------------------------------------------------------------------ inference on any size
@pytest.fixture(scope='module')
def fpn_small(repo_root):
    from mmengine.model import revert_sync_batchnorm
    cfg = _load_cfg(repo_root, 'fpn_iformer_s_ade20k_80k.py')
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    return revert_sync_batchnorm(_build(cfg.model)).eval()


@pytest.mark.parametrize('mode, size', [('whole', (512, 683)), ('whole', (131, 97)),
                                        ('slide', (131, 97))])
def test_inference_returns_a_label_map_of_the_input_size(fpn_small, mode, size):
    """ADE20K test images arrive keep-ratio resized (e.g. 512x683) and odd-sized; slide mode
    tiles crops that overhang the image edge. Both must give one label per input pixel."""
    from mmengine.config import ConfigDict
    fpn_small.test_cfg = ConfigDict(mode=mode, crop_size=(64, 64), stride=(43, 43))
    x = torch.rand(1, 3, *size) * 255
    with torch.no_grad():
        out = fpn_small.predict(x)
    assert out[0].pred_sem_seg.data.shape == (1, *size)
    assert out[0].seg_logits.data.shape == (150, *size)
    assert torch.isfinite(out[0].seg_logits.data).all()
