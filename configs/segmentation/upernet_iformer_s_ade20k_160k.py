# UperNet + iFormer-S on ADE20K, the paper's setup: AdamW lr 6e-5, wd 0.01, 1500-iteration
# linear warm-up then poly decay, 160k iterations, crop 512x512, 16 images per batch
# (8 GPUs x 2), head channels 512, auxiliary FCN head on stage 3 (loss weight 0.4).
# Paper: 48.4 mIoU.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    './_base_/iformer_ade20k.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
# Override with --cfg-options model.backbone.init_cfg.checkpoint=PATH.
checkpoint_file = 'checkpoints/iformer_small.pth'
crop_size = (512, 512)
# SyncBN for multi-GPU runs; tools/train.py and tools/test.py turn it into BN on CPU.
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,  # the base's ResNet URL cannot apply to this backbone
    backbone=dict(
        _delete_=True,
        type='iformer_mm.IFormer',
        arch='small',
        img_size=224,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.25,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(
        in_channels=[96, 192, 320, 384], channels=512, num_classes=150, norm_cfg=norm_cfg),
    auxiliary_head=dict(
        in_channels=320, in_index=2, num_classes=150, norm_cfg=norm_cfg,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    test_cfg=dict(mode='whole'))

# AdamW, no weight decay on position tables, layer scales and norm layers.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={'pos_embed': dict(decay_mult=0.), 'layer_scale': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, begin=1500, end=160000, by_epoch=False),
]
