# Example: the iFormer backbone in another MMDetection detector (Cascade Mask R-CNN + FPN, 1x).
#
# Using iFormer in any mmdet config takes three things, all shown here:
#   1. custom_imports for iformer_mm (registers the backbone while the config is read);
#   2. the backbone dict (replace the base's ResNet with _delete_=True) and the neck's
#      in_channels = the backbone's out_channels (S 96/192/320/384, B 96/192/384/512,
#      L 96/192/448/640);
#   3. AdamW with no weight decay on pos_embed*, norms and layer_scale*.
_base_ = 'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['iformer_mm'], allow_failed_imports=False)

pretrained = 'checkpoints/iformer_small.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='iformer_mm.IFormer',
        arch='small',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 320, 384]))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={'pos_embed': dict(decay_mult=0.0), 'layer_scale': dict(decay_mult=0.0)}))
