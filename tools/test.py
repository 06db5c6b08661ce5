#!/usr/bin/env python
"""Test (evaluate) a checkpoint with any OpenMMLab 2.0 config (MMDetection, MMSegmentation, ...).

The config's ``default_scope`` says which toolbox builds it; the flags are MMDetection's /
MMSegmentation's::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE_OR_DIR]
                         [--show] [--show-dir DIR] [--wait-time S] [--tta] [--amp bf16|fp16]
                         [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

``--out``: mmdet writes the raw predictions to a ``.pkl`` file; mmseg writes the predicted
label maps into a directory. ``--show-dir``: pictures of the predictions (a sub-directory of
the run's work dir for mmdet, as in mmdet's tool). ``--tta``: test-time augmentation with the
config's ``tta_model`` / ``tta_pipeline`` (an error names what is missing).
Multi-process: ``tools/dist_test.sh CONFIG CHECKPOINT N``.
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
from iformer_mm.engine import (init_distributed, prepare_runtime_cfg, teardown_distributed,  # noqa: E402
                               run_trusted)
from iformer_mm.engine.config_check import build_runner, preflight_or_exit  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector / segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='mmdet: dump predictions to this .pkl file; mmseg: save predicted '
                        'label maps into this directory')
    parser.add_argument('--show', action='store_true', help='show prediction results in a window')
    parser.add_argument('--show-dir', help='directory where painted images will be saved')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (config must define it)')
    parser.add_argument('--amp', choices=['bf16', 'fp16'], default=None,
                        help='mixed precision inference: backbone + neck in bf16 (CPU with bf16 units, '
                        'GPU) or fp16 (GPU only); heads stay fp32')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. test_dataloader.batch_size=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def _scope(cfg) -> str:
    return str(cfg.get('default_scope') or 'mmengine')


def build_cfg(args: argparse.Namespace):
    from mmengine.config import Config, ConfigDict
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        raise SystemExit(f'error: checkpoint {args.checkpoint!r} not found (give the .pth that '
                         'tools/train.py wrote into its work dir, e.g. work_dirs/<config>/epoch_12.pth)')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    scope = _scope(cfg)

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        hooks = cfg.get('default_hooks') or {}
        if 'visualization' not in hooks:
            raise SystemExit('--show/--show-dir: the config has no default_hooks.visualization '
                             '(mmdet: DetVisualizationHook, mmseg: SegVisualizationHook)')
        vis = hooks['visualization']
        vis['draw'] = True
        if args.show:
            vis['show'] = True
            vis['wait_time'] = args.wait_time
        if args.show_dir:
            if scope == 'mmseg':
                cfg.visualizer['save_dir'] = args.show_dir
            else:  # mmdet: relative to the run's work dir / timestamp, as mmdet's tool does
                vis['test_out_dir'] = args.show_dir

    if args.tta:
        missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
        if missing:
            raise SystemExit(f'--tta: {args.config} defines no {" / ".join(missing)}. Test-time '
                             'augmentation needs both in the config (mmdet: DetTTAModel, which '
                             'merges boxes only, so not for Mask R-CNN masks; mmseg: SegTTAModel).')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)

    if args.amp is not None:
        from iformer_mm.engine.amp import apply_amp
        apply_amp(cfg, args.amp, training=False)

    if args.out is not None:
        if scope == 'mmseg':
            cfg.test_evaluator['output_dir'] = args.out
            cfg.test_evaluator['keep_results'] = True
        elif scope == 'mmdet':
            if not args.out.endswith(('.pkl', '.pickle')):
                raise SystemExit('--out: mmdet predictions are dumped to a .pkl/.pickle file')
        else:
            raise SystemExit(f'--out is supported for mmdet and mmseg configs, not scope {scope!r}')
    return cfg


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = build_cfg(args)
    prepare_runtime_cfg(cfg, args.launcher)
    # The same preflight as tools/train.py, for what a test run reads (build_cfg already
    # checked the checkpoint path): a broken install, a backbone type the registry cannot
    # find, a missing test set or a class-count mismatch fail here with the fix.
    preflight_or_exit(cfg, splits=('test',))

    init_distributed(cfg, args.launcher)
    try:
        runner = build_runner(cfg)
        if args.out is not None and _scope(cfg) == 'mmdet':
            from mmdet.evaluation import DumpDetResults
            runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
        # The checkpoint is one our runs wrote: allow the mmengine/numpy objects it holds, nothing
        # else; still weights_only (iformer_mm/engine/trusted_runs.py).
        run_trusted(runner.test, cfg.load_from)
    finally:
        teardown_distributed()


if __name__ == '__main__':
    main_entry(main)
