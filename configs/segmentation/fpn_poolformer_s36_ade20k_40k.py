# Semantic FPN + PoolFormer-S36 on ADE20K, the PoolFormer paper's recipe as
# fpn_poolformer_s12_ade20k_40k.py (see there); only the backbone differs. Paper: 42.0 mIoU.
_base_ = './fpn_poolformer_s12_ade20k_40k.py'

checkpoint_file = 'checkpoints/poolformer_s36.safetensors'
model = dict(
    backbone=dict(model_name='poolformer_s36', init_cfg=dict(checkpoint=checkpoint_file)))
