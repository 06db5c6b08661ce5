# Semantic FPN + iFormer-L on ADE20K: the iFormer-S recipe with the large backbone.
_base_ = './fpn_iformer_s_ade20k_80k.py'

checkpoint_file = 'checkpoints/iformer_large.pth'
model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[96, 192, 448, 640]))
