"""Parameters and FLOPs of a config, a timm model name or a backbone, counted two ways
(the papers' mmcv 1.x hooks without attention products, and fvcore rules with them).

    python tools/analysis/get_flops.py configs/detection/mask_rcnn_iformer_s_1x.py --shape 1280 800
    python tools/analysis/get_flops.py iformer_small --backbone-only --shape 1280 800

See :mod:`iformer_mm.analysis.flops` for the counting rules.
"""
from iformer_mm.analysis.flops import main
from iformer_mm.cli import main_entry

if __name__ == '__main__':
    main_entry(main)
