# Mask R-CNN + FPN with a PoolFormer-S36 backbone (timm's `poolformer_s36`), 1x: the PoolFormer
# paper's recipe (Yu et al., CVPR 2022, COCO: AdamW lr 2e-4, weight decay 1e-4 on every parameter,
# 12 epochs, batch 16, 1333x800, GroupNorm on each output as the authors' detection backbone).
# Everything else is MMDetection's own Mask R-CNN R50-FPN 1x. Paper: box AP 41.0, mask AP 37.7.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['iformer_mm'], allow_failed_imports=False)

# timm-hub weights (https://huggingface.co/timm/poolformer_s36.sail_in1k) or the authors' .pth.tar
pretrained = 'checkpoints/poolformer_s36.safetensors'

model = dict(
    backbone=dict(
        _delete_=True,
        type='iformer_mm.TimmBackbone',
        model_name='poolformer_s36',
        out_indices=(0, 1, 2, 3),
        out_norm='gn',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 320, 512]))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4))

auto_scale_lr = dict(enable=False, base_batch_size=16)
