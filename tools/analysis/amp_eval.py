"""Evaluate one checkpoint in fp32 and in bf16 side by side: time per image and metrics.

    python tools/analysis/amp_eval.py work_dirs/demo/demo_config.py work_dirs/demo/demo_model.pth
    python tools/analysis/amp_eval.py CONFIG CKPT --threads 1 --json out.json

See :mod:`iformer_mm.analysis.amp_eval`.
"""
from iformer_mm.analysis.amp_eval import main
from iformer_mm.cli import main_entry

if __name__ == '__main__':
    main_entry(main)
