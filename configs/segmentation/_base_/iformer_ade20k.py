# What every iFormer ADE20K config here shares: mmseg's ADE20K data and runtime, the checked
# dataset (names a missing/mismatched annotation before training starts instead of failing
# inside a worker) and multi-scale + flip test-time augmentation (tools/test.py --tta).
_base_ = [
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
]
# In the file (not --cfg-options): mmengine imports these while it reads the config.
# iformer_mm registers the backbone; iformer_mm.datasets the checked ADE20K dataset.
custom_imports = dict(imports=['iformer_mm', 'iformer_mm.datasets'], allow_failed_imports=False)

train_dataloader = dict(batch_size=2, dataset=dict(type='CheckedADE20KDataset'))
val_dataloader = dict(batch_size=1, dataset=dict(type='CheckedADE20KDataset'))
test_dataloader = val_dataloader

# TTA: the test scale (2048, 512) times each ratio, keep-ratio, each with and without a flip.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=(int(2048 * r), int(512 * r)), keep_ratio=True)
             for r in img_ratios],
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ])
]
tta_model = dict(type='SegTTAModel')

# 16 images per batch (8 GPUs x 2); --auto-scale-lr rescales lr to the actual total batch.
auto_scale_lr = dict(enable=False, base_batch_size=16)
