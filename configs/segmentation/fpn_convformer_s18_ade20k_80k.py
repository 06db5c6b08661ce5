# Semantic FPN + ConvFormer-S18 (timm's `convformer_s18`) on ADE20K: exactly the iFormer-S
# recipe, as fpn_caformer_s18_ade20k_80k.py (see there); only the backbone differs.
_base_ = './fpn_caformer_s18_ade20k_80k.py'

checkpoint_file = 'checkpoints/convformer_s18.safetensors'
model = dict(backbone=dict(model_name='convformer_s18', init_cfg=dict(checkpoint=checkpoint_file)))
