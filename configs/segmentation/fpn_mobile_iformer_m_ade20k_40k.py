# Semantic FPN + Mobile iFormer-M (ICLR 2025, Zheng) on ADE20K, 40k iterations: the authors'
# recipe. Published: 42.4 mIoU (configs/segmentation/README.md). Not the Inception Transformer
# of fpn_iformer_s_ade20k_80k.py: see docs/mobile_iformer.md.
#
# AdamW lr 2e-4, wd 1e-4, poly (power 0.9, down to 1e-6), crop 512x512, 32 images per batch
# (8 GPUs x 4). The backbone is the authors' dense model: stage-3 attention in 16x16 windows,
# BN frozen (norm_eval=True), raw stage outputs, no drop path.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    './_base_/iformer_ade20k.py',
    'mmseg::_base_/schedules/schedule_40k.py',
]
# The authors' distilled ImageNet checkpoint (their init); override with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH (or init_cfg=None to train from scratch).
checkpoint_file = 'checkpoints/iFormer_m_distill.pth'
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,  # the base's ResNet URL cannot apply to this backbone
    backbone=dict(
        _delete_=True,
        type='iformer_mm.MobileIFormer',
        arch='m',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[48, 96, 192, 384], out_channels=256, num_outs=4),
    decode_head=dict(num_classes=150),
    test_cfg=dict(mode='whole'))

train_dataloader = dict(batch_size=4)  # per GPU; x 8 GPUs

# AdamW on every parameter (the authors set no weight-decay exemptions).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=1e-6, begin=0, end=40000, by_epoch=False)
]
# --auto-scale-lr rescales lr to the actual total batch (authors: 8 GPUs x 4 images).
auto_scale_lr = dict(enable=False, base_batch_size=32)
