# Semantic FPN + ConvFormer-S18 (timm's `convformer_s18`) on ADE20K: exactly the iFormer-S recipe
# (configs/segmentation/fpn_iformer_s_ade20k_80k.py: AdamW lr 2e-4, wd 1e-4, poly, 80k, crop 512,
# batch 16, drop path 0.1, LayerNorm on each output) for a controlled comparison. Only the backbone,
# the FPN widths and the weight-decay exemptions (every 1-D parameter) change.
_base_ = './fpn_iformer_s_ade20k_80k.py'

checkpoint_file = 'checkpoints/convformer_s18.safetensors'
model = dict(
    backbone=dict(
        _delete_=True,
        type='iformer_mm.TimmBackbone',
        model_name='convformer_s18',
        out_indices=(0, 1, 2, 3),
        out_norm='ln',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[64, 128, 320, 512]))

optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, flat_decay_mult=0.0))
