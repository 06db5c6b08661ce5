# Mask R-CNN + FPN with PoolFormer-S24, 1x, the PoolFormer paper's recipe as
# mask_rcnn_poolformer_s12_1x.py (see there); only the backbone differs.
# Paper: box AP 40.1, mask AP 37.0.
_base_ = './mask_rcnn_poolformer_s12_1x.py'

pretrained = 'checkpoints/poolformer_s24.safetensors'
model = dict(backbone=dict(model_name='poolformer_s24', init_cfg=dict(checkpoint=pretrained)))
