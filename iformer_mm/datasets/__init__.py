"""Dataset helpers that need only numpy and PIL (no OpenMMLab import at package import).

* :mod:`.ade_from_coco` — an ADE20K-layout semantic-segmentation set painted from COCO.
* :mod:`.imagefolder_from_coco` — an ImageFolder classification set cut from COCO.
* :mod:`.demo_data` — the generated instance-segmentation set of ``tools/demo.py``.

Import the submodule you need, e.g. ``from iformer_mm.datasets.demo_data import make_demo_dataset``.
"""
