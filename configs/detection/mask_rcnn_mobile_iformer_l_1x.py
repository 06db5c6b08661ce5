# Mask R-CNN + FPN, Mobile iFormer-L, 1x: the authors' recipe (see mask_rcnn_mobile_iformer_m_1x.py).
# Published: 42.2 box AP / 39.1 mask AP. Stage-3 windows over 7 of its 8 attention triples.
_base_ = './mask_rcnn_mobile_iformer_m_1x.py'

pretrained = 'checkpoints/iFormer_l_distill.pth'
model = dict(
    backbone=dict(arch='l', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[48, 96, 256, 384]))
