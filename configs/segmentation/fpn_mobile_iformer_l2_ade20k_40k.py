# Semantic FPN + Mobile iFormer-L2 on ADE20K, 40k: the authors' recipe (see
# fpn_mobile_iformer_m_ade20k_40k.py). Published: 46.2 mIoU.
_base_ = './fpn_mobile_iformer_m_ade20k_40k.py'

checkpoint_file = 'checkpoints/iFormer_l2_distill.pth'
model = dict(
    backbone=dict(arch='l2', init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[64, 128, 256, 512]))
