# Mask R-CNN + FPN with an iFormer-S backbone, 1x schedule (the iFormer paper's COCO setup).
#
# Everything not set here (FPN/RPN/RoI heads, COCO pipeline at 1333x800, 12 epochs with steps
# at 8 and 11 and a 500-iteration linear warm-up, evaluation, hooks) is inherited unchanged
# from MMDetection's own Mask R-CNN R50-FPN 1x config.
#
# Batch size: 16 images = 8 GPUs x 2 images (train_dataloader.batch_size=2 per process).
# With another total batch size B, scale the learning rate linearly (lr = 1e-4 * B / 16) or
# pass --auto-scale-lr to tools/train.py, which does exactly that from auto_scale_lr below.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

# Imported while the config is read, so mmdet's own tools/train.py can use this file too.
custom_imports = dict(imports=['iformer_mm'], allow_failed_imports=False)

# The authors' ImageNet-1k checkpoint (see configs/detection/README.md for where to get it).
# Override with --cfg-options model.backbone.init_cfg.checkpoint=/path/to/iformer_small.pth
pretrained = 'checkpoints/iformer_small.pth'

model = dict(
    backbone=dict(
        _delete_=True,  # drop the ResNet-50 settings of the base config
        type='iformer_mm.IFormer',
        arch='small',
        img_size=224,  # size of the ImageNet position tables; resized to every feature map
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 320, 384]))

# AdamW lr 1e-4, weight decay 0.05; no decay on the position tables, any norm and the layer
# scales (custom_keys match parameter-name substrings: pos_embed1..4, layer_scale_1/2).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            'pos_embed': dict(decay_mult=0.0),
            'layer_scale': dict(decay_mult=0.0),
        }))

# --auto-scale-lr rescales lr by (actual total batch) / 16.
auto_scale_lr = dict(enable=False, base_batch_size=16)
