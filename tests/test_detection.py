"""Detection configs, tools and runtime helpers: fast checks (no training)."""
from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet')

import iformer_mm  # noqa: E402,F401
from _subprocess import env_with_repo  # noqa: E402
from iformer_mm.engine import (check_pretrained_files, convert_sync_bn, prepare_runtime_cfg,  # noqa: E402
                               trusted_run_checkpoints)
from iformer_mm.pretrained import CheckpointError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DET = REPO / 'configs' / 'detection'
OUT_CHANNELS = {'small': [96, 192, 320, 384], 'base': [96, 192, 384, 512], 'large': [96, 192, 448, 640]}


def _cfg(name: str):
    from mmengine.config import Config
    return Config.fromfile(str(DET / name))


def _tool(name: str):
    return importlib.import_module(f'tools.{name}')


@pytest.mark.parametrize('name,arch,ckpt,dpr', [
    ('mask_rcnn_iformer_s_1x.py', 'small', 'checkpoints/iformer_small.pth', 0.1),
    ('mask_rcnn_iformer_b_1x.py', 'base', 'checkpoints/iformer_base.pth', 0.2),
    ('mask_rcnn_iformer_l_1x.py', 'large', 'checkpoints/iformer_large.pth', 0.3),
])
def test_mask_rcnn_1x_configs_match_paper_setup(name, arch, ckpt, dpr):
    cfg = _cfg(name)
    assert cfg.custom_imports['imports'] == ['iformer_mm']  # usable from mmdet's own tools
    bb = cfg.model.backbone
    assert (bb.type, bb.arch, bb.drop_path_rate) == ('iformer_mm.IFormer', arch, dpr)
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=ckpt)
    assert 'depth' not in bb  # ResNet keys of the base were deleted
    assert cfg.model.neck.in_channels == OUT_CHANNELS[arch]
    assert cfg.model.type == 'MaskRCNN'
    # 1x: 12 epochs, steps 8/11, 500-iteration linear warm-up
    assert cfg.train_cfg.max_epochs == 12
    warm, steps = cfg.param_scheduler
    assert (warm.type, warm.end, warm.by_epoch) == ('LinearLR', 500, False)
    assert (steps.type, steps.milestones) == ('MultiStepLR', [8, 11])
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-4, 0.05)
    assert 'momentum' not in opt  # SGD settings of the base were deleted
    # 16 images per batch on 8 GPUs; lr scaling reference
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    # 1333x800 train and test
    assert any(t.get('scale') == (1333, 800) for t in cfg.train_pipeline)
    assert any(t.get('scale') == (1333, 800) for t in cfg.test_pipeline)


def test_3x_multiscale_config():
    cfg = _cfg('mask_rcnn_iformer_s_3x_ms.py')
    assert cfg.train_cfg.max_epochs == 36
    assert cfg.param_scheduler[1].milestones == [27, 33]
    pipe = cfg.train_dataloader.dataset.pipeline
    choice = next(t for t in pipe if t.type == 'RandomChoice')
    short_sides = sorted({min(s) for s in choice.transforms[0][0].scales})
    assert short_sides[0] == 480 and short_sides[-1] == 800 and len(short_sides) == 11
    assert cfg.model.backbone.arch == 'small'


def test_param_wise_decay_spares_pos_embed_norms_layer_scale():
    """Build the S model + optimizer from the config: the zero-decay set is exactly the backbone's
    ``no_weight_decay()`` (pos_embed1..4, every norm, layer scales) and nothing else decays 0."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = _cfg('mask_rcnn_iformer_s_1x.py')
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    # the paper's parameter count (39.64 M measured with the reference implementation)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 39.64
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    names = {id(p): n for n, p in model.named_parameters()}
    zero = {names[id(p)] for g in wrapper.optimizer.param_groups for p in g['params'] if g['weight_decay'] == 0}
    decayed = {names[id(p)] for g in wrapper.optimizer.param_groups for p in g['params']
               if g['weight_decay'] == pytest.approx(0.05)}
    expected = {f'backbone.{n}' for n in model.backbone.no_weight_decay()}
    assert {f'backbone.pos_embed{i}' for i in range(1, 5)} <= zero
    assert any('layer_scale' in n for n in zero) and 'backbone.norm0.weight' in zero
    assert zero == expected
    assert zero | decayed == set(names.values())
    assert 'backbone.blocks1.0.attn.low_mixer.qkv.weight' in decayed
    assert 'neck.fpn_convs.0.conv.weight' in decayed


def test_sync_bn_becomes_bn_without_cuda_and_dist_uses_gloo():
    from mmengine.config import Config
    cfg = Config(dict(
        model=dict(type='X', decode_head=dict(norm_cfg=dict(type='SyncBN', requires_grad=True)),
                   auxiliary_head=[dict(norm_cfg=dict(type='SyncBN'))]),
        env_cfg=dict(dist_cfg=dict(backend='nccl')),
        train_dataloader=dict(num_workers=0, persistent_workers=True)))
    if torch.cuda.is_available():
        pytest.skip('conversion only happens without CUDA')
    prepare_runtime_cfg(cfg, launcher='pytorch')
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    assert cfg.model.auxiliary_head[0].norm_cfg.type == 'BN'
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.device_ids is None  # CPU DDP refuses a device list
    assert cfg.train_dataloader.persistent_workers is False  # torch rejects it with 0 workers
    assert convert_sync_bn(dict(norm_cfg=dict(type='BN'))) == []


def test_missing_pretrained_file_fails_before_training(tmp_path):
    """The user-facing message names the file, the config key and the fix; no data is touched."""
    res = subprocess.run([sys.executable, str(REPO / 'tools' / 'train.py'),
                          str(DET / 'mask_rcnn_iformer_s_1x.py'), '--work-dir', str(tmp_path / 'wd')],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env_with_repo())
    assert res.returncode != 0
    assert "pretrained weights not found: 'checkpoints/iformer_small.pth'" in res.stderr
    assert '--cfg-options model.backbone.init_cfg.checkpoint=' in res.stderr
    assert 'Epoch(train)' not in res.stdout + res.stderr


def test_missing_pretrained_is_skipped_when_resuming():
    from mmengine.config import Config
    cfg = Config(dict(model=dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='nope.pth'))),
                      load_from='work_dirs/x/epoch_1.pth', resume=True))
    check_pretrained_files(cfg)
    assert cfg.model.backbone.init_cfg is None
    cfg = Config(dict(model=dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='nope.pth')))))
    with pytest.raises(CheckpointError, match='nope.pth'):
        check_pretrained_files(cfg)


def test_train_flags(tmp_path):
    train = _tool('train')
    cfg_path = str(DET / 'mask_rcnn_iformer_s_1x.py')
    cfg = train.build_cfg(train.parse_args([cfg_path, '--auto-scale-lr', '--resume',
                                            '--cfg-options', 'model.backbone.drop_path_rate=0.3']))
    assert cfg.auto_scale_lr.enable is True
    assert cfg.resume is True and cfg.load_from is None  # auto: latest checkpoint of work_dir
    assert cfg.work_dir == './work_dirs/mask_rcnn_iformer_s_1x'
    assert cfg.model.backbone.drop_path_rate == 0.3
    cfg = train.build_cfg(train.parse_args([cfg_path, '--resume', 'a/epoch_3.pth', '--work-dir', 'w']))
    assert (cfg.resume, cfg.load_from, cfg.work_dir) == (True, 'a/epoch_3.pth', 'w')
    if not torch.cuda.is_available():
        # a bare --amp is bf16 on CPU (backbone + neck autocast); fp16 needs a GPU
        cfg = train.build_cfg(train.parse_args([cfg_path, '--amp']))
        assert dict(type='iformer_mm.FeatureAutocastHook', dtype='bf16', inference=False) in cfg.custom_hooks
        with pytest.raises(SystemExit, match='--amp fp16 needs a CUDA GPU'):
            train.build_cfg(train.parse_args([cfg_path, '--amp', 'fp16']))


def test_test_flags(tmp_path):
    test = _tool('test')
    ckpt = tmp_path / 'epoch_1.pth'
    ckpt.write_bytes(b'')
    cfg_path = str(DET / 'mask_rcnn_iformer_s_1x.py')
    cfg = test.build_cfg(test.parse_args([cfg_path, str(ckpt), '--show-dir', 'vis']))
    assert cfg.load_from == str(ckpt)
    assert cfg.default_hooks.visualization.draw is True
    assert cfg.default_hooks.visualization.test_out_dir == 'vis'
    with pytest.raises(SystemExit, match='defines no tta_model / tta_pipeline'):
        test.build_cfg(test.parse_args([cfg_path, str(ckpt), '--tta']))
    with pytest.raises(SystemExit, match='.pkl'):
        test.build_cfg(test.parse_args([cfg_path, str(ckpt), '--out', 'preds.json']))
    with pytest.raises(SystemExit, match='not found'):
        test.build_cfg(test.parse_args([cfg_path, str(tmp_path / 'missing.pth')]))


class _Evil:
    def __reduce__(self):
        return (print, ('pwned',))


def test_run_checkpoints_load_safely(tmp_path):
    """What mmengine saves loads with weights_only=True inside trusted_run_checkpoints();
    without it torch refuses, and inside it any other global is still refused."""
    from mmengine.logging import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(np.float64(1.5))
    good = tmp_path / 'run.pth'
    torch.save(dict(state_dict=dict(w=torch.ones(2)),
                    message_hub=dict(log_scalars=dict(loss=buf)),
                    meta=dict(iter=np.int64(7), lr=np.array([1e-4], dtype=np.float32))), good)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(good)  # torch's default: refused
    with trusted_run_checkpoints():
        ck = torch.load(good)
    assert ck['meta']['iter'] == 7 and ck['message_hub']['log_scalars']['loss'].current() == 1.5
    assert ck['message_hub']['log_scalars']['loss'].mean() == 1.5  # statistics methods restored

    evil = tmp_path / 'evil.pth'
    torch.save(dict(x=_Evil()), evil)
    with trusted_run_checkpoints(), pytest.raises(pickle.UnpicklingError):
        torch.load(evil)
    # getattr is only allowed for HistoryBuffer's four statistics methods
    sneaky = tmp_path / 'sneaky.pth'
    torch.save(dict(f=getattr(HistoryBuffer, 'update')), sneaky)
    with trusted_run_checkpoints(), pytest.raises(pickle.UnpicklingError):
        torch.load(sneaky)
