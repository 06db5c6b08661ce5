"""Classification path end to end, on real pixels (crops of tiny_coco instances, 6 classes, 64 px;
without ../shared, of the demo's generated set, 3 classes).

train.py -> loss falls, last/best written (weights_only-safe) -> resume continues at the next
epoch -> validate.py reproduces the training-time top-1/top-5 -> the checkpoint initialises
iformer_mm.IFormer (every backbone weight) and the Mask R-CNN config (init_cfg and load_from) ->
fine-tune to another size and class count -> a 2-process torchrun run with the full recipe's
augmentations. iFormer-S throughout: the variant the detector config uses.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import iformer_mm  # noqa: F401
from iformer_mm.datagen.imagefolder_from_coco import build_imagefolder_from_coco
from iformer_mm.models.iformer import resize_pos_embed
from _subprocess import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / 'tools/classification/train.py')
VALIDATE = str(REPO / 'tools/classification/validate.py')
# A short, augmentation-free run: on 48 images the loss must fall within 2 epochs.
PLAIN = ['--model', 'iformer_small', '--img-size', '64', '-b', '8', '--lr', '5e-4', '--warmup-epochs', '0',
         '--cooldown-epochs', '0', '--no-aug', '--aa', 'none', '--mixup', '0', '--cutmix', '0',
         '--smoothing', '0', '--reprob', '0', '--drop-path', '0', '-j', '0', '--log-interval', '3']


def _run(cmd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f'{" ".join(map(str, cmd))} failed:\n{out[-4000:]}'
    return out


def _count(data_dir, split):
    """(classes, images) of one split of the ImageFolder (6 classes of tiny_coco, or the generated set's 3)."""
    folder = Path(data_dir) / split
    return len([p for p in folder.iterdir() if p.is_dir()]), len(list(folder.rglob('*.jpg')))


def _history(exp_dir):
    return [json.loads(line) for line in (Path(exp_dir) / 'log.jsonl').read_text().splitlines()]


@pytest.fixture(scope='module')
def data_dir(tiny_coco_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp('imagefolder')
    build_imagefolder_from_coco(tiny_coco_dir, root, size=64)
    return root


@pytest.fixture(scope='module')
def run(data_dir, tmp_path_factory):
    """Two epochs of iFormer-S from scratch; returns (experiment dir, console output)."""
    out_root = tmp_path_factory.mktemp('train')
    log = _run([sys.executable, TRAIN, str(data_dir), *PLAIN, '--epochs', '2', '--output', str(out_root)])
    return out_root / 'iformer_small', log


def test_training_lowers_loss_and_writes_safe_checkpoints(run, data_dir):
    exp, log = run
    hist = _history(exp)
    assert [h['epoch'] for h in hist] == [0, 1]
    assert hist[1]['train_loss'] < hist[0]['train_loss'], hist
    assert 'img/s' in log and 'ETA epoch' in log
    for name in ('last.pth', 'best.pth'):
        ckpt = torch.load(exp / name, weights_only=True)  # plain tensors/numbers only
        assert {'state_dict', 'optimizer', 'scheduler', 'epoch', 'best_metric', 'args'} <= set(ckpt)
        assert isinstance(ckpt['args'], dict) and ckpt['args']['model'] == 'iformer_small'
    last = torch.load(exp / 'last.pth', weights_only=True)
    assert last['epoch'] == 1 and last['num_classes'] == _count(data_dir, 'train')[0] and last['img_size'] == 64
    best_epoch = max(hist, key=lambda h: h['val_top1'])['epoch']
    assert torch.load(exp / 'best.pth', weights_only=True)['epoch'] == best_epoch


def test_resume_continues_at_the_next_epoch(run, data_dir, tmp_path):
    exp, _ = run
    log = _run([sys.executable, TRAIN, str(data_dir), *PLAIN, '--epochs', '3', '--output', str(tmp_path),
                '--resume', str(exp / 'last.pth')])
    assert 'continuing at epoch 2' in log
    hist = _history(tmp_path / 'iformer_small')
    assert [h['epoch'] for h in hist] == [2], 'resume retrained finished epochs'
    before = torch.load(exp / 'last.pth', weights_only=True)
    after = torch.load(tmp_path / 'iformer_small' / 'last.pth', weights_only=True)
    assert after['epoch'] == 2
    # AdamW's step count carried over: 3 epochs x N updates (tiny_coco: 6 = 48 images // batch 8), not 1 x N
    updates = _count(data_dir, 'train')[1] // 8
    steps = {int(s['step']) for s in after['optimizer']['state'].values()}
    assert steps == {3 * updates}, steps
    assert after['best_metric'] >= before['best_metric']
    assert not torch.equal(after['state_dict']['head.weight'], before['state_dict']['head.weight'])


def test_validate_reports_top1_top5_like_training(run, data_dir, tmp_path):
    exp, _ = run
    out = _run([sys.executable, VALIDATE, str(data_dir), '--checkpoint', str(exp / 'last.pth'), '-j', '0',
                '--results-file', str(tmp_path / 'r.json')])
    assert 'top-1' in out and f"top-{min(5, _count(data_dir, 'train')[0])}" in out  # top-5, or top-k of k < 5 classes
    res = json.loads((tmp_path / 'r.json').read_text())
    last = _history(exp)[-1]
    assert res['images'] == _count(data_dir, 'val')[1] and res['img_size'] == 64 and res['crop_pct'] == 0.9
    # same weights, same eval transform: exactly the numbers training logged
    assert res['top1'] == pytest.approx(last['val_top1']) and res['top5'] == pytest.approx(last['val_top5'])
    assert res['loss'] == pytest.approx(last['val_loss'], rel=1e-4)


def test_checkpoint_initialises_the_backbone(run):
    from iformer_mm import IFormer
    exp, _ = run
    trained = torch.load(exp / 'last.pth', weights_only=True)['state_dict']
    model = IFormer(arch='small', img_size=64, init_cfg=dict(type='Pretrained', checkpoint=str(exp / 'last.pth')))
    model.init_weights()
    report = model._pretrained_report
    assert sorted(report.dropped) == ['head.bias', 'head.weight', 'norm.bias', 'norm.weight']
    assert not report.unexpected and all(k.startswith('norm') for k in report.missing)
    checked = 0
    for k, v in model.state_dict().items():
        if k.split('.')[0] not in ('norm0', 'norm1', 'norm2', 'norm3'):
            assert torch.equal(v, trained[k]), k
            checked += 1
    assert checked == len(trained) - 4  # every backbone tensor of the checkpoint


def _mask_rcnn(checkpoint):
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(str(REPO / 'configs/detection/mask_rcnn_iformer_s_1x.py'))
    cfg.model.backbone.init_cfg = None if checkpoint is None else dict(type='Pretrained', checkpoint=str(checkpoint))
    return MODELS.build(cfg.model)


def _assert_backbone_is(backbone, trained):
    """Equal to the trained weights; position tables resized from 64 to the config's 224 px."""
    sd = backbone.state_dict()
    for k, v in trained.items():
        if k.startswith(('head.', 'norm.')):
            continue
        want = resize_pos_embed(v, sd[k].shape[1:3]) if k.startswith('pos_embed') else v
        assert sd[k].shape == want.shape and torch.allclose(sd[k], want), k


def test_checkpoint_starts_the_mask_rcnn_config(run, tmp_path):
    exp, _ = run
    trained = torch.load(exp / 'last.pth', weights_only=True)['state_dict']
    det = _mask_rcnn(exp / 'last.pth')  # init_cfg straight from the training checkpoint
    det.init_weights()
    assert det.backbone.pos_embed1.shape == (1, 56, 56, 96)  # the config's 224 tables
    _assert_backbone_is(det.backbone, trained)

    # load_from: the converted file with the 'backbone.' prefix, read by mmengine
    from mmengine.runner import load_checkpoint
    conv = tmp_path / 'load_from.pth'
    _run([sys.executable, str(REPO / 'tools/model_converters/iformer_to_mm.py'), str(exp / 'last.pth'),
          str(conv), '--prefix', 'backbone.'])
    det2 = _mask_rcnn(None)
    det2.backbone.img_size = (64, 64)  # load_from does not resize: build tables of the checkpoint's size
    for i, n in enumerate((16, 8, 4, 2)):
        dim = det2.backbone.embed_dims[i]
        setattr(det2.backbone, f'pos_embed{i + 1}', torch.nn.Parameter(torch.zeros(1, n, n, dim)))
    load_checkpoint(det2, str(conv), strict=False)
    for k, v in trained.items():
        if not k.startswith(('head.', 'norm.')):
            assert torch.equal(det2.backbone.state_dict()[k], v), k


def test_finetune_to_new_size_and_classes(run, data_dir, tmp_path):
    exp, _ = run
    log = _run([sys.executable, TRAIN, str(data_dir), *PLAIN, '--img-size', '96', '--num-classes', '10',
                '--initial-checkpoint', str(exp / 'last.pth'), '--epochs', '1', '--max-updates-per-epoch', '1',
                '--val-split', '', '--output', str(tmp_path)])
    n_classes = _count(data_dir, 'train')[0]
    assert 'Classifier head re-initialised' in log and f'has {n_classes} classes, the model has 10' in log
    assert 'resized pos_embed1: [1, 16, 16, 96] -> [1, 24, 24, 96]' in log
    ckpt = torch.load(tmp_path / 'iformer_small' / 'last.pth', weights_only=True)
    assert ckpt['state_dict']['head.weight'].shape == (10, 384) and ckpt['img_size'] == 96



@pytest.mark.dist
def test_torchrun_two_processes_full_recipe_augmentations(data_dir, tmp_path):
    """2 ranks (gloo on CPU) with RandAugment, mixup/cutmix, label smoothing, random erasing,
    grad clipping, EMA and bf16 autocast: both ranks train, validation is gathered, rank 0 saves."""
    cfg = str(REPO / 'configs/classification/iformer_small_in1k.yaml')
    _run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
          str(free_port()), TRAIN, str(data_dir), '-c', cfg, '--img-size', '64', '-b', '8',
          '--epochs', '1', '--warmup-epochs', '0', '--cooldown-epochs', '0', '--clip-grad', '1.0',
          '--model-ema', '--amp', '-j', '0', '--max-updates-per-epoch', '2', '--log-interval', '1',
          '--output', str(tmp_path)], timeout=400)
    (rec,) = _history(tmp_path / 'iformer_small')
    updates = min(2, _count(data_dir, 'train')[1] // (2 * 8))  # tiny_coco: 2 (--max-updates-per-epoch)
    assert rec['world_size'] == 2 and rec['train_samples'] == updates * 2 * 8  # updates x 2 ranks x 8
    assert rec['val_images'] == _count(data_dir, 'val')[1] and 'ema_val_top1' in rec
    ckpt = torch.load(tmp_path / 'iformer_small' / 'last.pth', weights_only=True)
    assert ckpt['world_size'] == 2 and 'state_dict_ema' in ckpt
    assert ckpt['args']['mixup'] == 0.8 and ckpt['args']['aa'] == 'rand-m9-mstd0.5-inc1' and ckpt['args']['amp']
    assert all(v.dtype == torch.float32 for k, v in ckpt['state_dict'].items() if v.is_floating_point())
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])
