"""mmdet's and mmseg's own inference APIs on the checkpoints our runs write, with nothing but
``custom_imports`` in the config (or ``import iformer_mm``): ``init_detector`` +
``inference_detector``, ``DetInferencer``, ``init_model`` + ``inference_model`` and
``MMSegInferencer`` read the checkpoints of mmengine's own ``Runner`` loop, of
``tools/train.py`` and of a 2-process ``tools/dist_train.sh`` run, on any supported torch
(2.1's ``torch.load`` would unpickle anything; 2.6+ refuses mmengine's objects).

A crafted checkpoint (a ``posix.system`` reduce, or any other global outside the allow-list of
``iformer_mm/engine/trusted_runs.py``) is refused by every one of these APIs and by
``tools/test.py`` with one line naming the object, and nothing in it runs: the crafted calls
would create a file, which must not exist afterwards.

The models are the repository's configs with a tiny iFormer (``tests/_golden.TINY_ARCH``) at
128 px; the fast tests train them for one iteration in-process with mmengine's Runner.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
import torch

from _configs import det_config, seg_config
from _golden import TINY_ARCH
from _subprocess import env_with_repo, free_port

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

REPO = Path(__file__).resolve().parents[1]
DIMS = TINY_ARCH['embed_dims']
ARCH = dict(_delete_=True, **TINY_ARCH)  # replaces the base's arch='small'

# The tests' parts of the tiny configs (tests/_configs.py writes the data parts)
DET_REST = f'''
model = dict(
    backbone=dict(arch={ARCH!r}, init_cfg=None, drop_path_rate=0.0),
    # 32-channel neck and heads: the same Mask R-CNN, small enough to train in a second
    neck=dict(in_channels={DIMS!r}, out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(in_channels=32, conv_out_channels=32, num_classes=len(classes))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=50), rcnn=dict(score_thr=0.0, max_per_img=5)))
train_cfg = dict(max_epochs=1, val_begin=99)  # batch 2: an iteration per two training images
default_hooks = dict(logger=dict(interval=1), visualization=dict(draw=False))
'''

SEG_REST = '''
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch={arch!r}, init_cfg=None, drop_path_rate=0.0),
    neck=dict(in_channels={dims!r}, out_channels=32),
    decode_head=dict(in_channels=[32] * 4, channels=32, num_classes=80{bn}))
train_cfg = dict(max_iters={iters}, val_interval=1000)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={iters}))
'''


def det_text(coco_dir: Path, classes, train_images: int) -> str:
    """configs/detection/mask_rcnn_iformer_s_1x.py with a tiny iFormer at 128 px (one epoch)."""
    return det_config(REPO / 'configs' / 'detection' / 'mask_rcnn_iformer_s_1x.py', coco_dir, classes,
                      train_images=train_images, val_images=2, rest=DET_REST)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def det_cfg(tiny_coco_dir, tiny_coco_classes, tmp_path_factory) -> Path:
    """configs/detection/mask_rcnn_iformer_s_1x.py with a tiny iFormer at 128 px (1 iteration)."""
    path = tmp_path_factory.mktemp('det') / 'mask_rcnn_tiny.py'
    path.write_text(det_text(tiny_coco_dir, tiny_coco_classes, train_images=2))
    return path


@pytest.fixture(scope='module')
def ade_dir(tiny_coco_dir, tmp_path_factory) -> Path:
    from iformer_mm.datagen.ade_from_coco import build_ade_from_coco
    out = tmp_path_factory.mktemp('ade')
    build_ade_from_coco(tiny_coco_dir, out, max_images=4, overwrite=True)
    return out


def write_seg_cfg(path: Path, ade_dir: Path, iters: int, sync_bn: bool) -> Path:
    """configs/segmentation/fpn_iformer_s_ade20k_80k.py with a tiny iFormer at 128 px.

    ``sync_bn=False``: the decode head's SyncBN becomes BN, for mmengine's own Runner in one
    process (our tools make that switch themselves).
    """
    path.write_text(seg_config(
        REPO / 'configs' / 'segmentation' / 'fpn_iformer_s_ade20k_80k.py', ade_dir,
        rest=SEG_REST.format(arch=ARCH, dims=DIMS, iters=iters,
                             bn='' if sync_bn else ", norm_cfg=dict(type='BN', requires_grad=True)")))
    return path


@pytest.fixture(scope='module')
def seg_cfg(ade_dir, tmp_path_factory) -> Path:
    return write_seg_cfg(tmp_path_factory.mktemp('seg') / 'fpn_tiny.py', ade_dir, iters=1, sync_bn=False)


def runner_train(cfg_file: Path, work_dir: Path) -> None:
    """What mmdet's/mmseg's own tools/train.py do: ``Runner.from_cfg(cfg).train()``."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(str(cfg_file))
    cfg.work_dir = str(work_dir)
    Runner.from_cfg(cfg).train()


@pytest.fixture(scope='module')
def det_runner_ckpt(det_cfg, tmp_path_factory) -> Path:
    """A checkpoint written by mmengine's own training loop on our detection config."""
    work = tmp_path_factory.mktemp('det_runner')
    runner_train(det_cfg, work)
    return work / 'epoch_1.pth'


@pytest.fixture(scope='module')
def seg_runner_ckpt(seg_cfg, tmp_path_factory) -> Path:
    """A checkpoint written by mmengine's own training loop on our segmentation config."""
    work = tmp_path_factory.mktemp('seg_runner')
    runner_train(seg_cfg, work)
    return work / 'iter_1.pth'


# ----------------------------------------------------------------------------- the APIs
IMAGE = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)  # BGR, as mmcv reads


def det_apis(cfg: Path, ckpt: Path) -> Dict[str, Callable[[], object]]:
    """mmdet's two ways to run a checkpoint, each from scratch (build, load, predict)."""
    from mmdet.apis import DetInferencer, inference_detector, init_detector

    def low_level():
        model = init_detector(str(cfg), str(ckpt), device='cpu')
        return model, inference_detector(model, IMAGE)

    def inferencer():
        inf = DetInferencer(model=str(cfg), weights=str(ckpt), device='cpu', show_progress=False)
        return inf, inf(IMAGE, return_datasamples=True)['predictions'][0]

    return {'init_detector+inference_detector': low_level, 'DetInferencer': inferencer}


def seg_apis(cfg: Path, ckpt: Path) -> Dict[str, Callable[[], object]]:
    """mmseg's two ways to run a checkpoint, each from scratch (build, load, predict)."""
    from mmseg.apis import MMSegInferencer, inference_model, init_model

    def low_level():
        model = init_model(str(cfg), str(ckpt), device='cpu')
        return model, inference_model(model, IMAGE)

    def inferencer():
        inf = MMSegInferencer(model=str(cfg), weights=str(ckpt), device='cpu')
        return inf.model, inf(IMAGE, return_datasamples=True)

    return {'init_model+inference_model': low_level, 'MMSegInferencer': inferencer}


def trained_weights(ckpt: Path) -> Dict[str, torch.Tensor]:
    from iformer_mm.engine import load_from_local_safely
    return load_from_local_safely(ckpt, map_location='cpu')['state_dict']


def check_det_apis(cfg: Path, ckpt: Path) -> None:
    """Both mmdet APIs load exactly the checkpoint's weights and predict boxes and masks."""
    key = 'backbone.blocks1.0.attn.low_mixer.qkv.weight'
    want = trained_weights(ckpt)[key]
    for name, api in det_apis(cfg, ckpt).items():
        model, pred = api()
        model = getattr(model, 'model', model)
        assert torch.equal(model.state_dict()[key], want), name
        inst = pred.pred_instances
        assert len(inst) > 0 and inst.masks.shape[-2:] == IMAGE.shape[:2], (name, inst)


def check_seg_apis(cfg: Path, ckpt: Path) -> None:
    """Both mmseg APIs load exactly the checkpoint's weights and predict a label map."""
    key = 'backbone.blocks1.0.attn.low_mixer.qkv.weight'
    want = trained_weights(ckpt)[key]
    for name, api in seg_apis(cfg, ckpt).items():
        model, pred = api()
        assert torch.equal(model.state_dict()[key], want), name
        labels = pred.pred_sem_seg.data
        assert labels.shape == (1, *IMAGE.shape[:2]) and int(labels.max()) < 80, (name, labels.shape)


def test_importing_iformer_mm_gives_mmengine_our_local_and_url_loaders():
    """After ``import iformer_mm`` every local path and URL mmengine reads goes through our
    loaders; the zoo-name schemes reach ours through the URL they map to."""
    import iformer_mm  # noqa: F401
    from mmengine.runner import checkpoint as mm_checkpoint
    from mmengine.runner.checkpoint import CheckpointLoader

    from iformer_mm.engine.trusted_runs import load_from_local_safely, load_from_url_safely
    for path in ('work_dirs/x/epoch_1.pth', '/abs/iter_5.pth', 'ckpt.pth'):
        assert CheckpointLoader._get_checkpoint_loader(path) is load_from_local_safely
    for url in ('https://x/y.pth', 'http://x/y.pth'):
        assert CheckpointLoader._get_checkpoint_loader(url) is load_from_url_safely
    assert mm_checkpoint.load_from_http is load_from_url_safely  # what torchvision:// etc. call


def _zoo_urls() -> Dict[str, str]:
    """One name per URL-backed mmengine scheme, with the URL it downloads."""
    from mmengine.runner.checkpoint import get_external_models, get_torchvision_models
    return {'https://example.invalid/zoo/model-1234.pth': 'https://example.invalid/zoo/model-1234.pth',
            'torchvision://resnet18': get_torchvision_models()['resnet18'],
            'open-mmlab://resnet50_v1c': get_external_models()['resnet50_v1c']}


@pytest.mark.parametrize('name', list(_zoo_urls()))
def test_model_zoo_checkpoints_are_read_safely(name, tmp_path, monkeypatch):
    """``load_from``/``init_cfg`` with a URL or a zoo name (mmengine would unpickle the download
    with ``weights_only=False`` on every torch): a cached plain state dict loads; a crafted one
    in the same cache file is refused in one line and runs nothing. Offline: the file is put
    where torch.hub caches the URL."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from iformer_mm import CheckpointError
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)
    url = _zoo_urls()[name]
    cached = Path(torch.hub.get_dir()) / 'checkpoints' / Path(url).name
    cached.parent.mkdir(parents=True)
    weights = {'conv.weight': torch.randn(4, 3, 3, 3)}
    torch.save({'state_dict': weights}, cached)
    got = CheckpointLoader.load_checkpoint(name, map_location='cpu')
    assert torch.equal(got['state_dict']['conv.weight'], weights['conv.weight'])

    marker = tmp_path / 'zoo.ran'
    torch.save({'state_dict': weights, 'meta': {'extra': _RunsShell(marker)}}, cached)
    with pytest.raises(CheckpointError) as err:
        CheckpointLoader.load_checkpoint(name, map_location='cpu')
    assert_refused_in_one_line(err.value, 'posix.system', cached)
    assert not marker.exists()


def test_det_apis_on_a_runner_checkpoint(det_cfg, det_runner_ckpt):
    """mmengine's own Runner loop (what mmdet's tools/train.py runs) on our Mask R-CNN config."""
    check_det_apis(det_cfg, det_runner_ckpt)


def test_seg_apis_on_a_runner_checkpoint(seg_cfg, seg_runner_ckpt):
    """mmengine's own Runner loop (what mmseg's tools/train.py runs) on our Semantic FPN config."""
    check_seg_apis(seg_cfg, seg_runner_ckpt)


# ----------------------------------------------------------------------------- crafted files
class _RunsShell:
    """Unpickling this runs ``touch <path>`` through ``os.system`` (pickled as ``posix.system``)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f'touch {self.path}',))


class _OpensFile:
    """Unpickling this calls ``io.open(path, 'w')``, which creates the file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (io.open, (str(self.path), 'w'))


CRAFTED = {
    'posix.system': lambda marker: _RunsShell(marker),
    'io.open': lambda marker: _OpensFile(marker),
    'argparse.Namespace': lambda marker: argparse.Namespace(lr=0.1),  # harmless, but not allowed
}


def craft(real_ckpt: Path, kind: str, out_dir: Path) -> tuple:
    """A real run checkpoint plus one crafted object in its ``meta``: ``(file, marker)``."""
    marker = out_dir / f'{kind}.ran'
    from iformer_mm.engine import load_from_local_safely
    ckpt = load_from_local_safely(real_ckpt, map_location='cpu')
    ckpt['meta']['extra'] = CRAFTED[kind](marker)
    path = out_dir / f'crafted_{kind.replace(".", "_")}.pth'
    torch.save(ckpt, path)
    return path, marker


def assert_refused_in_one_line(exc: BaseException, kind: str, path: Path) -> None:
    msg = str(exc)
    assert '\n' not in msg, msg
    assert f"'{kind}'" in msg and str(path) in msg and 'refused by safe loading' in msg, msg
    assert 'weights_only=False' not in msg, msg


@pytest.mark.parametrize('kind', ['posix.system', 'io.open'])
@pytest.mark.parametrize('toolbox', ['mmdet', 'mmseg'])
def test_every_api_refuses_a_crafted_checkpoint_and_runs_nothing(toolbox, kind, request, tmp_path):
    """Each API stops with one CheckpointError line naming the object; the file never appears."""
    from iformer_mm import CheckpointError
    if toolbox == 'mmdet':
        cfg, real = request.getfixturevalue('det_cfg'), request.getfixturevalue('det_runner_ckpt')
        apis = det_apis
    else:
        cfg, real = request.getfixturevalue('seg_cfg'), request.getfixturevalue('seg_runner_ckpt')
        apis = seg_apis
    path, marker = craft(real, kind, tmp_path)
    for name, api in apis(cfg, path).items():
        with pytest.raises(CheckpointError) as err:
            api()
        assert_refused_in_one_line(err.value, kind, path)
        assert not marker.exists(), f'{name}: the crafted checkpoint ran code'


def test_the_loader_refuses_every_global_outside_the_allow_list(det_runner_ckpt, tmp_path, monkeypatch):
    """Both reading paths (torch's weights_only allow-list, and the restricted unpickler that
    torch < 2.6 uses) read a real run checkpoint and refuse every crafted one, including a
    ``getattr`` of anything but HistoryBuffer's four statistics methods."""
    from mmengine.logging import HistoryBuffer

    from iformer_mm import CheckpointError
    from iformer_mm import pretrained
    from iformer_mm.engine import load_from_local_safely
    real = load_from_local_safely(det_runner_ckpt)
    files = {kind: craft(det_runner_ckpt, kind, tmp_path) for kind in CRAFTED}
    sneaky = tmp_path / 'sneaky.pth'
    torch.save(dict(real, extra=getattr(HistoryBuffer, 'update')), sneaky)
    for restricted_unpickler in (False, True):
        if restricted_unpickler:
            monkeypatch.setattr(pretrained, 'has_safe_global_aliases', lambda: False)
        ck = load_from_local_safely(det_runner_ckpt)
        assert torch.equal(ck['state_dict']['backbone.pos_embed1'], real['state_dict']['backbone.pos_embed1'])
        hub = ck['message_hub']['log_scalars']
        assert isinstance(hub['train/loss'], HistoryBuffer) and np.isfinite(hub['train/loss'].mean())
        for kind, (path, marker) in files.items():
            with pytest.raises(CheckpointError) as err:
                load_from_local_safely(path)
            assert_refused_in_one_line(err.value, kind, path)
            assert not marker.exists()
        with pytest.raises(CheckpointError, match='getattr'):
            load_from_local_safely(sneaky)


@pytest.mark.parametrize('toolbox', ['mmdet', 'mmseg'])
def test_tools_test_refuses_a_crafted_checkpoint(toolbox, request, tmp_path):
    """tools/test.py: one ``error:`` line naming the object, exit 1, no traceback, nothing ran."""
    if toolbox == 'mmdet':
        cfg, real, kind = request.getfixturevalue('det_cfg'), request.getfixturevalue('det_runner_ckpt'), 'posix.system'
    else:
        cfg, real, kind = request.getfixturevalue('seg_cfg'), request.getfixturevalue('seg_runner_ckpt'), 'io.open'
    path, marker = craft(real, kind, tmp_path)
    res = subprocess.run([sys.executable, str(REPO / 'tools' / 'test.py'), str(cfg), str(path),
                          '--work-dir', str(tmp_path / 'work')], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env=env_with_repo(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore'))
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert 'Traceback' not in res.stderr, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and f"'{kind}'" in last and 'refused by safe loading' in last, last
    assert not marker.exists()


# ----------------------------------------------------------------------------- README
def readme_inference_snippet(toolbox: str) -> str:
    """The README's python block that runs a trained checkpoint with ``toolbox``'s inferencer."""
    blocks = re.findall(r'```python\n(.*?)```', (REPO / 'README.md').read_text(), flags=re.S)
    cls = {'mmdet': 'DetInferencer', 'mmseg': 'MMSegInferencer'}[toolbox]
    found = [b for b in blocks if f'from {toolbox}.apis import {cls}' in b]
    assert len(found) == 1, f'README has {len(found)} {cls} snippets'
    return found[0]


@pytest.mark.parametrize('toolbox', ['mmdet', 'mmseg'])
def test_readme_inference_snippet_runs_verbatim(toolbox, request, tmp_path):
    """The README's snippet, run as written in a fresh interpreter that never imports iformer_mm
    itself (the config's custom_imports does), on a checkpoint at the path it names."""
    code = readme_inference_snippet(toolbox)
    cfg, ckpt = ((request.getfixturevalue('det_cfg'), request.getfixturevalue('det_runner_ckpt'))
                 if toolbox == 'mmdet' else
                 (request.getfixturevalue('seg_cfg'), request.getfixturevalue('seg_runner_ckpt')))
    assert 'iformer_mm' not in code
    want_cfg, want_ckpt = re.findall(r"(?:model|weights)='([^']+)'", code)
    for src, dst in ((cfg, want_cfg), (ckpt, want_ckpt)):
        (tmp_path / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tmp_path / dst)
    from PIL import Image
    image = re.search(r"inferencer\('([^']+)'", code).group(1)
    Image.fromarray(IMAGE[..., ::-1]).save(tmp_path / image)
    res = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env=env_with_repo(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore'))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert list((tmp_path / 'outputs' / 'vis').iterdir()), 'no painted prediction written'


# ----------------------------------------------------------------------------- our tools
def run_tool(args: List[str], cwd: Path, timeout: int = 900, **env: str) -> str:
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env=env_with_repo(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', **env))
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
def test_apis_on_tools_train_checkpoints(det_cfg, ade_dir, tmp_path):
    """tools/train.py (resilience hooks, SyncBN -> BN on CPU) on both configs; the APIs read both."""
    run_tool([sys.executable, str(REPO / 'tools' / 'train.py'), str(det_cfg), '--work-dir', str(tmp_path / 'det')], REPO)
    check_det_apis(det_cfg, tmp_path / 'det' / 'epoch_1.pth')
    seg = write_seg_cfg(tmp_path / 'fpn_tiny_syncbn.py', ade_dir, iters=1, sync_bn=True)
    run_tool([sys.executable, str(REPO / 'tools' / 'train.py'), str(seg), '--work-dir', str(tmp_path / 'seg')], REPO)
    check_seg_apis(seg, tmp_path / 'seg' / 'iter_1.pth')


@pytest.mark.slow
@pytest.mark.dist
def test_apis_on_dist_train_checkpoints(tiny_coco_dir, tiny_coco_classes, ade_dir, tmp_path):
    """tools/dist_train.sh CONFIG 2 (two gloo processes) on both configs; the APIs read both."""
    det = tmp_path / 'mask_rcnn_tiny_dist.py'
    det.write_text(det_text(tiny_coco_dir, tiny_coco_classes, train_images=4))
    seg = write_seg_cfg(tmp_path / 'fpn_tiny_dist.py', ade_dir, iters=1, sync_bn=True)
    for cfg, work in ((det, 'det'), (seg, 'seg')):
        out = run_tool(['bash', str(REPO / 'tools' / 'dist_train.sh'), str(cfg), '2', '--work-dir',
                        str(tmp_path / work)], REPO, PORT=str(free_port()))
        assert 'Distributed training: True' in out
    check_det_apis(det, tmp_path / 'det' / 'epoch_1.pth')
    check_seg_apis(seg, tmp_path / 'seg' / 'iter_1.pth')
