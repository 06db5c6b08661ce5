# UperNet + iFormer-L on ADE20K: the iFormer-S recipe with the large backbone.
_base_ = './upernet_iformer_s_ade20k_160k.py'

checkpoint_file = 'checkpoints/iformer_large.pth'
model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(in_channels=[96, 192, 448, 640]),
    auxiliary_head=dict(in_channels=448))
