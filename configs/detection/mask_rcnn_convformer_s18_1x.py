# Mask R-CNN + FPN with a ConvFormer-S18 backbone (timm's `convformer_s18`), 1x: exactly the iFormer-S recipe
# (configs/detection/mask_rcnn_iformer_s_1x.py: AdamW lr 1e-4, wd 0.05, 12 epochs, batch 16,
# 1333x800, drop path 0.1, LayerNorm on each output), so the two backbones are compared on the same
# detector and schedule. Only the backbone, the FPN widths and the weight-decay exemptions change:
# every 1-D parameter (norms, biases, layer/res scales, StarReLU's scale and bias) takes no decay,
# which is what TimmBackbone.no_weight_decay() lists.
_base_ = './mask_rcnn_iformer_s_1x.py'

# timm-hub weights (https://huggingface.co/timm/convformer_s18.sail_in1k, model.safetensors) or the
# authors' .pth: both load strictly. Override with --cfg-options model.backbone.init_cfg.checkpoint=PATH
pretrained = 'checkpoints/convformer_s18.safetensors'

model = dict(
    backbone=dict(
        _delete_=True,
        type='iformer_mm.TimmBackbone',
        model_name='convformer_s18',
        out_indices=(0, 1, 2, 3),
        out_norm='ln',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 320, 512]))

optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, flat_decay_mult=0.0))
