"""Paint a COCO-layout folder into an ADE20K-layout semantic segmentation dataset.

    python tools/dataset_converters/ade_from_coco.py ../shared/data/tiny_coco data/ade_from_coco

Writes ``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png``
(0 = no object, 1..80 = COCO classes); train on it with the segmentation configs and
``train_dataloader.dataset.type=ADEFromCOCODataset`` (see configs/segmentation/README.md).
"""
import importlib.util
import os

# The converter needs only numpy and PIL: load its module file directly, because importing
# the iformer_mm package would pull in torch, mmengine and timm (seconds of start-up).
_MODULE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'iformer_mm',
                       'datasets', 'ade_from_coco.py')

if __name__ == '__main__':
    spec = importlib.util.spec_from_file_location('ade_from_coco', _MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()
