# UperNet + iFormer-B on ADE20K: the iFormer-S recipe with the base backbone.
_base_ = './upernet_iformer_s_ade20k_160k.py'

checkpoint_file = 'checkpoints/iformer_base.pth'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[96, 192, 384, 512]),
    auxiliary_head=dict(in_channels=384))
