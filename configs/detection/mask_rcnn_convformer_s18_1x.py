# Mask R-CNN + FPN with a ConvFormer-S18 backbone (timm's `convformer_s18`), 1x: exactly the
# iFormer-S recipe, as mask_rcnn_caformer_s18_1x.py (see there); only the backbone differs.
_base_ = './mask_rcnn_caformer_s18_1x.py'

pretrained = 'checkpoints/convformer_s18.safetensors'
model = dict(backbone=dict(model_name='convformer_s18', init_cfg=dict(checkpoint=pretrained)))
