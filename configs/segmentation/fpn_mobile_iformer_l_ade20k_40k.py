# Semantic FPN + Mobile iFormer-L on ADE20K, 40k: the authors' recipe (see
# fpn_mobile_iformer_m_ade20k_40k.py). Published: 44.5 mIoU.
_base_ = './fpn_mobile_iformer_m_ade20k_40k.py'

checkpoint_file = 'checkpoints/iFormer_l_distill.pth'
model = dict(
    backbone=dict(arch='l', init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[48, 96, 256, 384]))
