# Mask R-CNN + FPN with an iFormer-L backbone, 1x schedule (drop path 0.3).
# See mask_rcnn_iformer_s_1x.py for the shared settings.
_base_ = './mask_rcnn_iformer_s_1x.py'

pretrained = 'checkpoints/iformer_large.pth'

model = dict(
    backbone=dict(arch='large', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 448, 640]))
