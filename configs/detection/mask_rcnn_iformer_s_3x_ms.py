# Mask R-CNN + FPN, iFormer-S, 3x schedule (36 epochs, steps at 27 and 33) with multi-scale
# training: the schedule Swin / ConvNeXt / PVTv2 report as "3x + MS". As they do, each image
# is either resized so its short side is one of 480..800 (step 32), or resized to a short side
# of 400/500/600, randomly cropped to 384..600 px and resized again (DETR-style). Testing
# stays single-scale 1333x800 (inherited).
_base_ = './mask_rcnn_iformer_s_1x.py'

# Short sides used for multi-scale training (long side capped at 1333).
ms_scales = [(1333, s) for s in range(480, 801, 32)]

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(1333, 400), (1333, 500), (1333, 600)],
                     keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]
