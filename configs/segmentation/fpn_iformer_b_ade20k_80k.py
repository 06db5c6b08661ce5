# Semantic FPN + iFormer-B on ADE20K: the iFormer-S recipe with the base backbone.
_base_ = './fpn_iformer_s_ade20k_80k.py'

checkpoint_file = 'checkpoints/iformer_base.pth'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[96, 192, 384, 512]))
