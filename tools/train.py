#!/usr/bin/env python
"""Train any OpenMMLab 2.0 config (MMDetection, MMSegmentation, ...) with mmengine's Runner.

The config's ``default_scope`` says which toolbox builds it; the flags are MMDetection's /
MMSegmentation's (same names, same meaning)::

    python tools/train.py CONFIG [--work-dir DIR] [--resume [auto|CKPT]] [--amp [bf16|fp16]]
                                 [--auto-scale-lr] [--cfg-options k=v ...]
                                 [--launcher none|pytorch|slurm|mpi]

Multi-process: ``tools/dist_train.sh CONFIG N`` (torchrun) or ``tools/slurm_train.sh``.
Runs on CPU-only machines too (SyncBN -> BN, gloo, see iformer_mm/engine/device.py).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import warnings

# setuptools' own notice, raised when mmengine imports pkg_resources: harmless here.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

import iformer_mm  # noqa: E402,F401  (registers the iformer_mm backbones before mm imports)
from iformer_mm.cli import main_entry  # noqa: E402
from iformer_mm.engine import (check_pretrained_files, init_distributed, prepare_runtime_cfg,  # noqa: E402
                               teardown_distributed, run_trusted)
from iformer_mm.engine.resilience import add_resilience_hooks  # noqa: E402
from iformer_mm.engine.config_check import build_runner, preflight_or_exit  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Train a detector / segmentor (mmengine Runner)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--amp', nargs='?', const='default', default=None, choices=['default', 'bf16', 'fp16'],
                        help='mixed precision training: bf16 or fp16 (GPU only); bare --amp is fp16 on a '
                        'GPU (mmdet\'s meaning) and bf16 on CPU')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale lr by (processes x batch_size) / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT; without a value, from the latest checkpoint '
                        'in the work dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.backbone.drop_path_rate=0.2 '
                        "(note: custom_imports must be in the config file itself)")
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    # torch.distributed.launch passes --local-rank (older torch: --local_rank)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args: argparse.Namespace):
    """Load the config and apply the command-line flags (same precedence as mmdet/mmseg)."""
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    # work_dir: CLI > config > ./work_dirs/<config name>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        # CUDA: mmengine's AmpOptimWrapper; CPU: backbone + neck under bf16 autocast
        # (iformer_mm/engine/amp.py says why mmengine's wrapper cannot be used there).
        import torch
        from iformer_mm.engine.amp import apply_amp
        dtype = args.amp if args.amp != 'default' else ('fp16' if torch.cuda.is_available() else 'bf16')
        apply_amp(cfg, dtype, training=True)

    if args.auto_scale_lr:
        if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
            raise SystemExit(f'--auto-scale-lr: {args.config} has no auto_scale_lr.base_batch_size; '
                             'add e.g. auto_scale_lr = dict(enable=False, base_batch_size=16) '
                             '(the total batch size its lr was tuned for).')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = build_cfg(args)
    prepare_runtime_cfg(cfg, args.launcher)
    check_pretrained_files(cfg)  # a missing or unsafe file: one line, from main_entry
    # Broken installs and configs fail here, in a second, with the fix (iformer_mm/engine/stack_check.py,
    # iformer_mm/engine/config_check.py); checkpoints are written atomically and resume with the RNG
    # positions of the interrupted run (iformer_mm/engine/resilience.py).
    preflight_or_exit(cfg)
    add_resilience_hooks(cfg)

    init_distributed(cfg, args.launcher)
    try:
        runner = build_runner(cfg)
        # Checkpoints of our own runs (resume, load_from) hold mmengine/numpy objects: allow
        # exactly those, loading stays weights_only (iformer_mm/engine/trusted_runs.py).
        run_trusted(runner.train, cfg.get('load_from'))
    finally:
        teardown_distributed()


if __name__ == '__main__':
    main_entry(main)
