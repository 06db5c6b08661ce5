"""Paint a COCO-layout folder into an ADE20K-layout semantic segmentation dataset.

    python tools/dataset_converters/ade_from_coco.py ../shared/data/tiny_coco data/ade_from_coco

Writes ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``
(0 = no object, 1..80 = COCO classes); train on it with the segmentation configs and
``train_dataloader.dataset.type=ADEFromCOCODataset`` (see configs/segmentation/README.md).
Same as ``python -m iformer_mm.datagen.ade_from_coco``.
"""
from iformer_mm.cli import main_entry
from iformer_mm.datagen.ade_from_coco import main

if __name__ == '__main__':
    main_entry(main)
