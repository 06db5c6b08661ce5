#!/usr/bin/env python
"""Score an exported segmentor (ONNX) with mmseg's own test loop and evaluator (mIoU).

    python tools/deploy/onnx_test.py CONFIG FILE.onnx [--threads N] [--work-dir DIR]
                                     [--cfg-options k=v ...]

The config's ``test_dataloader`` (its pipeline), data preprocessor, ``test_cfg`` (whole or
slide) and ``test_evaluator`` run as in ``tools/test.py``; the network (backbone, neck, decode
head) runs in ONNX Runtime on CPU. FILE comes from ``tools/deploy/export_onnx.py CONFIG CKPT``
without ``--argmax``; use ``--dynamic`` unless every test image has the exported size.
Compare with PyTorch: ``python tools/test.py CONFIG CKPT``.
"""
from __future__ import annotations

import argparse
import warnings
from typing import Optional, Sequence

# setuptools' own notice, raised when mmengine imports pkg_resources: harmless here.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

from iformer_mm.cli import main_entry  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description='Evaluate an ONNX segmentor with mmseg (mIoU)')
    p.add_argument('config', help='the config the model was exported from (its test_dataloader is used)')
    p.add_argument('onnx_file', help='the exported segmentor (.onnx)')
    p.add_argument('--threads', type=int, default=None, help='ONNX Runtime intra-op threads (default: all cores)')
    p.add_argument('--work-dir', help='where mmengine writes its logs')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings')
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    from iformer_mm.deploy.onnx import ExportError, evaluate_onnx
    try:
        metrics = evaluate_onnx(args.config, args.onnx_file, args.work_dir, args.cfg_options, args.threads)
    except ExportError as e:
        raise SystemExit(f'error: {e}') from None
    print('ONNX Runtime: ' + '  '.join(f'{k}: {v:.2f}' for k, v in metrics.items()))


if __name__ == '__main__':
    main_entry(main)
