"""Reliability: bad inputs fail early with the fix, checkpoints never run code, bf16 numerics,
atomic checkpoint writes, and the environment check (docs/reliability.md lists every case)."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _subprocess import env_with_repo

import iformer_mm
from iformer_mm import CheckpointError, InceptionTransformer, load_checkpoint_file, load_pretrained
from iformer_mm.engine.stack_check import check_versions, installed_versions
from iformer_mm.engine.config_check import CUSTOM_IMPORTS_FIX, ConfigError, check_config, explain_build_error

REPO = Path(__file__).resolve().parents[1]


def _env():
    return env_with_repo(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


class _CreatesFile:
    """Pickles to a call of ``open(path, 'w')``: unpickling it would create ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


@pytest.fixture
def evil(tmp_path):
    """A checkpoint with real tensors whose unpickling would create ``marker``."""
    marker = tmp_path / 'PWNED'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'patch_embed.proj1.weight': torch.zeros(48, 3, 3, 3)},
                'meta': _CreatesFile(str(marker))}, path)
    assert not marker.exists()
    return path, marker


def _shape_only_state_dict(model: torch.nn.Module) -> dict:
    """Tensors of the model's shapes backed by one element each (tiny files of any variant)."""
    return {k: torch.zeros(1, dtype=v.dtype).expand(v.shape) if v.ndim else v.clone()
            for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- 1. clear errors
def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown iFormer arch 'xl'.*\['base', 'large', 'small'\]"):
        InceptionTransformer('xl')
    from iformer_mm.models.backbone import IFormer
    with pytest.raises(ValueError, match=r"Valid names: \['base', 'large', 'small'\]"):
        IFormer(arch='tiny')


@pytest.mark.parametrize('out_indices', [(4,), (0, 5), (-5,), ()])
def test_out_indices_out_of_range(out_indices):
    from iformer_mm.models.backbone import IFormer
    with pytest.raises(ValueError, match=r'out_indices .* out of range: iFormer has outputs 0\.\.3'):
        IFormer(arch='small', out_indices=out_indices)


def test_wrong_input_rank_channels_layout():
    model = InceptionTransformer('small', num_classes=0).eval()
    with pytest.raises(ValueError, match=r'4-D \(B, C, H, W\).*add a batch dimension'):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match=r'built for 3 input channels but got 1.*in_chans=1'):
        model(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r'looks channels-last.*permute\(0, 3, 1, 2\)'):
        model(torch.zeros(2, 64, 64, 3))
    with pytest.raises(TypeError, match='expects a tensor'):
        model(np.zeros((1, 3, 64, 64), dtype=np.float32))


def test_checkpoint_missing_names_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match=r'checkpoint file not found.*--cfg-options'):
        load_checkpoint_file(tmp_path / 'nope.pth')


def test_checkpoint_truncated_and_corrupt(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save({'w': torch.randn(64, 64)}, good)
    data = good.read_bytes()
    (tmp_path / 'trunc.pth').write_bytes(data[: len(data) // 2])
    (tmp_path / 'empty.pth').write_bytes(b'')
    (tmp_path / 'page.pth').write_text('<html><body>404 Not Found</body></html>')
    (tmp_path / 'noise.pth').write_bytes(np.random.default_rng(0).bytes(4096))
    for name in ('trunc.pth', 'empty.pth'):
        with pytest.raises(CheckpointError, match=r'truncated or corrupt.*Re-download'):
            load_checkpoint_file(tmp_path / name)
    with pytest.raises(CheckpointError, match=r"not a PyTorch checkpoint.*b'<html>.*HTML error page"):
        load_checkpoint_file(tmp_path / 'page.pth')
    with pytest.raises(CheckpointError, match=r'not a PyTorch checkpoint'):
        load_checkpoint_file(tmp_path / 'noise.pth')


def test_checkpoint_of_another_variant(tmp_path):
    base = InceptionTransformer('base', num_classes=1000)
    path = tmp_path / 'iformer_base.pth'
    torch.save(_shape_only_state_dict(base), path)
    del base
    small = InceptionTransformer('small', num_classes=1000)
    with pytest.raises(CheckpointError, match=r"holds iFormer-base .* but the model is iFormer-small.*arch='base'"):
        load_pretrained(small, path)
    from iformer_mm.models.backbone import IFormer
    backbone = IFormer(arch='small', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match=r'holds iFormer-base'):
        backbone.init_weights()


def test_checkpoint_matching_no_key(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(1000, 2048)}, path)
    with pytest.raises(CheckpointError, match=r'no key matches the model.*Expected an iFormer checkpoint'):
        load_pretrained(InceptionTransformer('small', num_classes=0), path)


def test_num_classes_mismatch_in_checkpoint(tmp_path):
    path = tmp_path / 'in1k.pth'
    torch.save(_shape_only_state_dict(InceptionTransformer('small', num_classes=1000)), path)
    with pytest.raises(CheckpointError, match=r'head\.weight has shape \[1000, 384\].*\[10, 384\].*num_classes'):
        load_pretrained(InceptionTransformer('small', num_classes=10), path)


def test_num_classes_mismatch_in_config():
    """A detector head with 80 classes on a 3-class dataset trains silently in mmdet: refused."""
    cfg = dict(
        model=dict(type='MaskRCNN', roi_head=dict(bbox_head=dict(num_classes=80),
                                                  mask_head=dict(num_classes=80))),
        train_dataloader=dict(dataset=dict(type='CocoDataset', metainfo=dict(classes=('a', 'b', 'c')))))
    with pytest.raises(ConfigError, match=r'model\.roi_head\.bbox_head\.num_classes=80 but train_dataloader'
                                          r'\.dataset has 3 classes.*num_classes=3'):
        check_config(cfg, datasets=False)
    cfg['train_dataloader']['dataset'] = dict(type='CocoDataset')  # COCO's own 80 classes
    check_config(cfg, datasets=False)


def test_unscoped_backbone_type_says_custom_imports():
    cfg = dict(model=dict(type='MaskRCNN', backbone=dict(type='IFormer', arch='small')))
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert "type='iformer_mm.IFormer'" in str(e.value) and CUSTOM_IMPORTS_FIX in str(e.value)
    # The registry error mmengine raises when a config skips the check gets the same fix.
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmengine')
    with pytest.raises(KeyError) as k:
        MODELS.build(dict(type='IFormer'))
    hint = explain_build_error(k.value)
    assert hint is not None and CUSTOM_IMPORTS_FIX in hint and 'is not in the' in hint


def test_dataset_paths_and_unparseable_annotations(tmp_path, tiny_coco_dir):
    good_root = str(tiny_coco_dir) + '/'
    (tmp_path / 'annotations').mkdir()
    (tmp_path / 'images').mkdir()
    broken = tmp_path / 'annotations' / 'broken.json'
    broken.write_text((tiny_coco_dir / 'annotations/instances_val2017.json').read_text()[:5000])

    def cfg(root, ann, img='images/val2017/'):
        return dict(model=dict(type='MaskRCNN'), train_dataloader=dict(dataset=dict(
            type='CocoDataset', data_root=root, ann_file=ann, data_prefix=dict(img=img))))

    check_config(cfg(good_root, 'annotations/instances_val2017.json'))  # the real thing passes
    with pytest.raises(ConfigError, match=r"data_root='/no/such/coco/' does not exist.*--cfg-options "
                                          r'train_dataloader\.dataset\.data_root='):
        check_config(cfg('/no/such/coco/', 'annotations/instances_val2017.json'))
    with pytest.raises(ConfigError, match=r'ann_file: .*instances_nope\.json\' does not exist'):
        check_config(cfg(good_root, 'annotations/instances_nope.json'))
    with pytest.raises(ConfigError, match=r'broken\.json\' does not parse as JSON.*re-download'):
        check_config(cfg(str(tmp_path) + '/', 'annotations/broken.json', img='images/'))
    with pytest.raises(ConfigError, match=r"data_prefix\.img: folder .*train3000/' does not exist"):
        check_config(cfg(good_root, 'annotations/instances_val2017.json', img='images/train3000/'))


def test_segmentation_config_with_missing_dataset(repo_root):
    from mmengine.config import Config
    cfgs = sorted(glob.glob(str(repo_root / 'configs/segmentation/fpn_iformer_s_*.py')))
    if not cfgs:
        pytest.skip('segmentation configs not present')
    cfg = Config.fromfile(cfgs[0])
    cfg.merge_from_dict({'train_dataloader.dataset.data_root': '/no/such/ade/'})
    with pytest.raises(ConfigError, match=r"train_dataloader\.dataset\.data_root='/no/such/ade/' does not exist"):
        check_config(cfg)


def test_tools_train_reports_config_problems_before_building(tmp_path, repo_root):
    """tools/train.py on a config with three mistakes: exit 1 in seconds, all three named with fixes."""
    cfg = tmp_path / 'bad.py'
    cfg.write_text(textwrap.dedent(f"""
        _base_ = {str(repo_root / 'configs/detection/mask_rcnn_iformer_s_1x.py')!r}
        model = dict(backbone=dict(type='IFormer', init_cfg=None))
        train_dataloader = dict(dataset=dict(data_root='/no/such/coco/'))
    """))
    t0 = time.time()
    res = subprocess.run([sys.executable, str(repo_root / 'tools/train.py'), str(cfg), '--work-dir',
                          str(tmp_path / 'w')], env=_env(), capture_output=True, text=True, timeout=300)
    elapsed = time.time() - t0
    assert res.returncode == 1
    err = res.stderr
    assert 'error: the config cannot work as written' in err
    assert CUSTOM_IMPORTS_FIX in err
    assert "data_root='/no/such/coco/' does not exist" in err
    assert 'Traceback' not in err
    assert not (tmp_path / 'w').exists() or not list((tmp_path / 'w').glob('*.pth'))
    assert elapsed < 120


def test_missing_mmcv_ops_says_what_to_install():
    """mmcv without its C++ ops (what a plain `pip install mmcv` builds): the tools' early check and
    check_env both say which reinstall fixes it."""
    code = ("import sys, json; sys.modules['mmcv._ext'] = None\n"
            "from iformer_mm.engine.stack_check import require_stack, StackError, main\n"
            "try:\n    require_stack('det')\nexcept StackError as e:\n    print(e)\n"
            "print('RC', main(['--json', '--quick']))\n")
    res = subprocess.run([sys.executable, '-c', code], env=_env(), capture_output=True, text=True, timeout=300)
    out = res.stdout
    assert "cannot run 'det'" in out
    assert 'mmcv ops' in out and 'MMCV_WITH_OPS=1' in out and 'mmcv==2.1.0' in out
    assert out.strip().endswith('RC 1')
    report = json.loads(out[out.index('{'):out.rindex('}') + 1])
    bad = [f for f in report['findings'] if f['level'] == 'error']
    assert [f['component'] for f in bad] == ['mmcv ops']
    assert 'MMCV_WITH_OPS=1' in bad[0]['fix']


@pytest.mark.parametrize('changes, component, fix', [
    ({'mmcv': '2.2.0'}, 'mmcv', 'mmcv==2.1.0'),
    ({'mmcv': None, 'mmcv-lite': '2.1.0'}, 'mmcv', 'MMCV_WITH_OPS=1'),
    ({'mmdet': '3.4.0'}, 'mmdet', 'pip install mmdet==3.3.0'),
    ({'mmsegmentation': '0.30.0'}, 'mmsegmentation', 'pip install mmsegmentation==1.2.2'),
    ({'mmengine': '1.0.0'}, 'mmengine', 'pip install mmengine==0.10.7'),
    ({'torchvision': '0.27.0'}, 'torchvision', 'pip install torchvision==0.28.0 torch==2.13.0'),
    ({'timm': '0.9.16'}, 'timm', 'timm>=1.0.30'),
    ({'timm': '1.0.16'}, 'timm', 'timm>=1.0.30'),
    ({'ftfy': None}, 'ftfy', 'pip install ftfy'),
])
def test_wrong_versions_name_the_fix(changes, component, fix):
    good = {'torch': '2.13.0+cpu', 'torchvision': '0.28.0', 'timm': '1.0.31', 'mmengine': '0.10.7',
            'mmcv': '2.1.0', 'mmdet': '3.3.0', 'mmsegmentation': '1.2.2', 'pycocotools': '2.0',
            'ftfy': '6.0', 'regex': '2024.1'}
    assert all(f.level == 'ok' for f in check_versions(good))
    found = [f for f in check_versions(dict(good, **changes)) if f.level == 'error']
    assert [f.component for f in found] == [component], found
    assert fix in found[0].fix


# --------------------------------------------------------------------------- 2. no code execution
def test_crafted_pickle_refused_by_loader(evil):
    path, marker = evil
    with pytest.raises(CheckpointError, match=r"refused by safe loading.*'(io|builtins)\.open'.*could run code"):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_crafted_pickle_refused_through_init_cfg(evil):
    from iformer_mm.models.backbone import IFormer
    path, marker = evil
    model = IFormer(arch='small', out_indices=(0,), init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match='refused by safe loading'):
        model.init_weights()
    assert not marker.exists()


def test_crafted_pickle_refused_through_timm_overlay(evil):
    timm = pytest.importorskip('timm')
    path, marker = evil
    with pytest.raises(Exception, match='weights_only'):
        timm.create_model('iformer_small', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()


def test_training_checkpoint_allowlist_does_not_admit_code(evil):
    """The allow-list used to resume our own runs adds data classes only: the crafted file is
    still refused by the reader that uses it (every torch)."""
    from iformer_mm import CheckpointError
    from iformer_mm.engine import load_from_local_safely
    path, marker = evil
    with pytest.raises(CheckpointError, match='refused by safe loading'):
        load_from_local_safely(path)
    assert not marker.exists()


def test_mmengine_checkpoint_objects_load_only_inside_allowlist(tmp_path):
    from mmengine.logging import HistoryBuffer

    from iformer_mm.engine import load_from_local_safely
    path = tmp_path / 'run.pth'
    buf = HistoryBuffer()
    buf.update(np.float64(0.5))
    torch.save({'message_hub': {'log_scalars': {'loss': buf}}, 'meta': {'seed': np.int64(3)},
                'state_dict': {'w': torch.ones(2)}}, path)
    with pytest.raises(Exception, match='HistoryBuffer'):
        torch.load(path, weights_only=True)
    ck = load_from_local_safely(path)
    assert ck['message_hub']['log_scalars']['loss'].current() == 0.5 and ck['meta']['seed'] == 3


# --------------------------------------------------------------------------- 3. atomic writes
_KILL_DURING_SAVE = """
import os, sys, time, torch
from mmengine.runner.checkpoint import save_checkpoint
from iformer_mm.engine import resilience
def stall(fd):  # the bytes are written, not yet renamed: the worst moment to die
    print('IN_SAVE', flush=True); time.sleep(600)
resilience.os.fsync = stall
with resilience.atomic_local_writes():
    save_checkpoint({{'state_dict': {{'w': torch.full((256, 1024), 2.0)}}}}, {path!r})
"""


def test_kill_during_checkpoint_save_leaves_previous_file_intact(tmp_path, repo_root):
    target = tmp_path / 'iter_4.pth'
    torch.save({'state_dict': {'w': torch.ones(256, 1024)}}, target)  # the previous checkpoint
    proc = subprocess.Popen([sys.executable, '-c', _KILL_DURING_SAVE.format(path=str(target))],
                            env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # mmengine may log a deprecation warning first
            if line.strip() == 'IN_SAVE':
                break
        else:
            pytest.fail('the saving process ended before reaching the save')
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The name still holds the complete previous checkpoint; the partial one has a temp name.
    assert torch.load(target, weights_only=True)['state_dict']['w'].eq(1).all()
    temps = [p for p in tmp_path.iterdir() if '.tmp-' in p.name]
    assert len(temps) == 1 and temps[0].name.startswith('.iter_4.pth')
    from iformer_mm.engine.resilience import remove_stale_temp_files
    assert remove_stale_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['iter_4.pth']


def test_atomic_writes_are_scoped(tmp_path):
    from mmengine.fileio.backends.local_backend import LocalBackend

    from iformer_mm.engine.resilience import atomic_local_writes
    orig = LocalBackend.put
    with atomic_local_writes():
        assert LocalBackend.put is not orig
        LocalBackend().put(b'abc', tmp_path / 'x.bin')
        LocalBackend().put_text('iter_2.pth', tmp_path / 'last_checkpoint')
    assert LocalBackend.put is orig
    assert (tmp_path / 'x.bin').read_bytes() == b'abc'
    assert (tmp_path / 'last_checkpoint').read_text() == 'iter_2.pth'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last_checkpoint', 'x.bin']


# --------------------------------------------------------------------------- 5. numerics
def _real_image(tiny_coco_dir: Path, size=(320, 224)) -> torch.Tensor:
    """A COCO photo, resized, normalised with the ImageNet mean/std the detectors use."""
    from PIL import Image
    path = sorted(glob.glob(str(tiny_coco_dir / 'images/val2017/*.jpg')))[0]
    im = np.asarray(Image.open(path).convert('RGB').resize(size), dtype=np.float32)
    x = torch.from_numpy(im).permute(2, 0, 1)[None]
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.slow
def test_bf16_autocast_is_finite_and_close_to_fp32(tiny_coco_dir):
    """iFormer-S backbone, training mode, a real 320x224 photo.

    Tolerances (measured on this machine, see docs/reliability.md): per-stage output relative
    L2 error 0.7-1.0 % (bf16 keeps 8 mantissa bits, eps 3.9e-3, accumulated over 18 blocks) —
    bound 3 %; the whole gradient vector's relative L2 error 7e-4 — bound 1e-2, cosine > 0.999.
    Per-parameter comparisons are meaningless for biases in front of a BatchNorm (their exact
    gradient is 0, both values are rounding noise), hence the global gradient.
    """
    from iformer_mm.models.backbone import IFormer
    torch.manual_seed(0)
    x = _real_image(tiny_coco_dir)
    model = IFormer(arch='small', drop_path_rate=0.0).train()

    def run(bf16: bool):
        model.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            outs = model(x)
        sum((o.float() ** 2).mean() for o in outs).backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        return [o.detach().float() for o in outs], grads

    o32, g32 = run(False)
    o16, g16 = run(True)
    for a, b in zip(o32, o16):
        assert torch.isfinite(b).all()
        assert ((a - b).norm() / a.norm()).item() < 0.03
    assert torch.isfinite(g16).all() and g16.abs().sum() > 0
    assert ((g32 - g16).norm() / g32.norm()).item() < 1e-2
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0).item() > 0.999


@pytest.mark.slow
def test_1333x800_forward_stays_finite():
    """The detection test size (1333x800, maps up to 200x334, 16.7k attention tokens in stage 1)."""
    from iformer_mm.models.backbone import IFormer
    torch.manual_seed(0)
    model = IFormer(arch='small').eval()
    x = torch.randn(1, 3, 800, 1333) * 2.5  # normalised images span about +-2.5
    with torch.no_grad():
        outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(1, 96, 200, 334), (1, 192, 100, 167), (1, 320, 50, 84),
                                              (1, 384, 25, 42)]
    for o in outs:
        assert torch.isfinite(o).all()
        assert o.abs().max() < 1e3


# --------------------------------------------------------------------------- 6. check_env
def test_check_env_verdict_on_this_machine(repo_root):
    res = subprocess.run([sys.executable, str(repo_root / 'tools/misc/check_env.py'), '--quick'],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    versions = installed_versions()
    for name in ('torch', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation', 'timm', 'torchvision'):
        assert versions[name] and f'{name}' in res.stdout and versions[name] in res.stdout
    assert '[OK  ] mmcv ops: mmcv._ext loads; nms runs on CPU' in res.stdout
    assert res.stdout.strip().splitlines()[-1].startswith('VERDICT: OK')


@pytest.mark.parametrize('broken', ['torchvision', 'timm'])
def test_check_env_reports_a_dependency_that_cannot_be_imported(broken, tmp_path, repo_root):
    """The check is what a user runs when ``import timm`` dies (a torchvision built for another
    torch, a half-installed timm): it still runs, names the failure with a fix and exits 1, with
    no traceback; ``import iformer_mm`` itself fails in one ImportError pointing at it."""
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(f'import sys\nsys.modules[{broken!r}] = None  # import {broken} fails\n')
    env = _env()
    env['PYTHONPATH'] = os.pathsep.join([str(site), env['PYTHONPATH']])
    for cmd in (['-m', 'iformer_mm.env', '--quick'], [str(repo_root / 'tools/misc/check_env.py'), '--quick']):
        res = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, timeout=300)
        out = res.stdout + res.stderr
        assert res.returncode == 1, out
        assert 'Traceback' not in out, out
        assert res.stdout.strip().splitlines()[-1].startswith('VERDICT: BROKEN'), out
        assert re.search(rf'\[FAIL\] .*{broken}', out) and 'fix: ' in out, out
    res = subprocess.run([sys.executable, '-c', 'import iformer_mm'], env=env, capture_output=True,
                         text=True, timeout=300)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1
    assert last.startswith('ImportError: iformer_mm cannot import its dependencies') and broken in last, last
    assert '`python -m iformer_mm.env`' in last
