# Semantic FPN + PoolFormer-M36 on ADE20K, the PoolFormer paper's recipe as
# fpn_poolformer_s12_ade20k_40k.py (see there); only the backbone differs. Paper: 42.4 mIoU.
_base_ = './fpn_poolformer_s12_ade20k_40k.py'

checkpoint_file = 'checkpoints/poolformer_m36.safetensors'
model = dict(
    backbone=dict(model_name='poolformer_m36', init_cfg=dict(checkpoint=checkpoint_file)),
    neck=dict(in_channels=[96, 192, 384, 768]))
