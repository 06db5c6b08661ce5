"""Dataset generators and converters that write datasets to disk (numpy and PIL only).

The registered dataset classes that *read* them are in :mod:`iformer_mm.datasets`.

* :mod:`.ade_from_coco` — an ADE20K-layout semantic-segmentation set painted from COCO.
* :mod:`.imagefolder_from_coco` — an ImageFolder classification set cut from COCO.
* :mod:`.demo_data` — the generated instance-segmentation set of ``tools/demo.py``.

Import the submodule you need, e.g. ``from iformer_mm.datagen.demo_data import make_demo_dataset``.
"""
