# Mask R-CNN + FPN with a Mobile iFormer-M backbone (ICLR 2025, Zheng), 1x schedule: the
# authors' recipe. Published: 40.8 box AP / 37.9 mask AP (configs/detection/README.md).
# Not the Inception Transformer of mask_rcnn_iformer_s_1x.py: see docs/mobile_iformer.md.
#
# The backbone is the authors' dense model: stage-3 attention in 16x16 windows (blocks 10..19
# of stage 3, window_size='auto'), BN frozen (norm_eval=True), raw stage outputs, no drop path.
# Everything not set here (FPN/RPN/RoI heads, COCO pipeline at 1333x800, 12 epochs, evaluation,
# hooks) is inherited unchanged from MMDetection's Mask R-CNN R50-FPN 1x config.
#
# Batch: 16 images = 8 GPUs x 2 (train_dataloader.batch_size=2 per process). With another total
# batch size pass --auto-scale-lr to tools/train.py (lr scaled by total / 16).
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

# Imported while the config is read, so mmdet's own tools/train.py can use this file too.
custom_imports = dict(imports=['iformer_mm'], allow_failed_imports=False)

# The authors' distilled ImageNet-1k checkpoint, their init for detection (configs/detection/
# README.md says where to get it). Override with
# --cfg-options model.backbone.init_cfg.checkpoint=/path/to/iFormer_m_distill.pth
pretrained = 'checkpoints/iFormer_m_distill.pth'

model = dict(
    backbone=dict(
        _delete_=True,  # drop the ResNet-50 settings of the base config
        type='iformer_mm.MobileIFormer',
        arch='m',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 192, 384]))

# AdamW lr 2e-4, weight decay 0.05 on every parameter (the authors set no exemptions).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05))
# Linear warm-up over 500 iterations from 1e-6 x lr, then x0.1 after epochs 8 and 11.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
