# Mask R-CNN + FPN, Mobile iFormer-L2, 1x: the authors' recipe (see mask_rcnn_mobile_iformer_m_1x.py).
# Published: 44.6 box AP / 41.1 mask AP. Stage-3 windows over 10 of its 11 attention triples.
_base_ = './mask_rcnn_mobile_iformer_m_1x.py'

pretrained = 'checkpoints/iFormer_l2_distill.pth'
model = dict(
    backbone=dict(arch='l2', init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
