# Semantic FPN + PoolFormer-S36 (timm's `poolformer_s36`) on ADE20K: the PoolFormer paper's recipe
# (AdamW lr 2e-4, weight decay 1e-4 on every parameter, poly power 0.9, 40k iterations, crop 512,
# 8 GPUs x 4 images = batch 32, GroupNorm on each output), as mmseg's own
# configs/poolformer/fpn_poolformer_s36_8xb4-40k_ade20k-512x512.py (mmpretrain's PoolFormer) has it.
# Paper: 42.0 mIoU.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    './_base_/iformer_ade20k.py',
    'mmseg::_base_/schedules/schedule_40k.py',
]
checkpoint_file = 'checkpoints/poolformer_s36.safetensors'
crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='iformer_mm.TimmBackbone',
        model_name='poolformer_s36',
        out_indices=(0, 1, 2, 3),
        out_norm='gn',
        frozen_stages=0,  # the stem, as mmseg's PoolFormer configs
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(in_channels=[64, 128, 320, 512], out_channels=256, num_outs=4),
    decode_head=dict(num_classes=150, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))

train_dataloader = dict(batch_size=4)  # x 8 GPUs = 32
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=40000, by_epoch=False)]
auto_scale_lr = dict(enable=False, base_batch_size=32)
