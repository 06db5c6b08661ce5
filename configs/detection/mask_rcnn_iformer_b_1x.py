# Mask R-CNN + FPN with an iFormer-B backbone, 1x schedule: the iFormer-S config with the
# base backbone (wider stages 3-4, drop path 0.2). See mask_rcnn_iformer_s_1x.py for the rest.
_base_ = './mask_rcnn_iformer_s_1x.py'

pretrained = 'checkpoints/iformer_base.pth'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 512]))
