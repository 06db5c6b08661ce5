# Semantic FPN + iFormer-S on the demo's generated data, to try the segmentation path on CPU in a
# few minutes with no download. First make the data (tools/demo.py writes work_dirs/demo/data):
#   python tools/dataset_converters/ade_from_coco.py work_dirs/demo/data work_dirs/demo/ade
#   python tools/train.py configs/segmentation/fpn_iformer_s_demo.py
#   python tools/test.py configs/segmentation/fpn_iformer_s_demo.py work_dirs/fpn_iformer_s_demo/iter_200.pth
# The model and optimizer are the paper's ADE20K config; data, crop size and schedule are shrunk.
_base_ = './fpn_iformer_s_ade20k_80k.py'

data_root = 'work_dirs/demo/ade'
# ade_from_coco numbers the demo's categories 1..3 in this order (0 = background, ignored)
metainfo = dict(classes=('disc', 'square', 'triangle'))
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(type='ADEFromCOCODataset', data_root=data_root, metainfo=metainfo,
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(type='ADEFromCOCODataset', data_root=data_root, metainfo=metainfo,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None, drop_path_rate=0.0),  # from scratch: no download
    decode_head=dict(num_classes=3))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=200, by_epoch=False)]
train_cfg = dict(max_iters=200, val_interval=200)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=200))
custom_hooks = [dict(type='iformer_mm.ProgressBarHook')]
