# Semantic FPN + iFormer-S on ADE20K, the paper's setup: AdamW lr 2e-4, wd 1e-4, poly,
# 80k iterations, crop 512x512, 16 images per batch (8 GPUs x 2). Paper: 48.6 mIoU.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    './_base_/iformer_ade20k.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
# The authors' ImageNet checkpoint; override with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH (or init_cfg=None to train from scratch).
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
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[96, 192, 320, 384], out_channels=256, num_outs=4),
    decode_head=dict(num_classes=150, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))

# AdamW, no weight decay on position tables, layer scales and norm layers.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={'pos_embed': dict(decay_mult=0.), 'layer_scale': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=80000, by_epoch=False)
]
