# Mask R-CNN + FPN with PoolFormer-S36, 1x, the PoolFormer paper's recipe as
# mask_rcnn_poolformer_s12_1x.py (see there); only the backbone differs.
# Paper: box AP 41.0, mask AP 37.7.
_base_ = './mask_rcnn_poolformer_s12_1x.py'

pretrained = 'checkpoints/poolformer_s36.safetensors'
model = dict(backbone=dict(model_name='poolformer_s36', init_cfg=dict(checkpoint=pretrained)))
