# Mask R-CNN iFormer-S 1x with layer-wise learning-rate decay (an example: not in the paper).
#
# Each backbone layer trains at lr * layer_decay_rate ** (num_layers - 1 - depth): the stem
# (depth 0) slowest, the last block at lr * 0.9, neck and heads (after the last block) at the
# full lr. Depths come from the backbone's get_layer_depth: stem 0, then one per block
# (1..18 for iFormer-S's 3+3+9+3 blocks; a stage's downsampling and position table share its
# first block's), output norms, neck and heads 19: the stem trains at lr * 0.9**19 = 0.135 lr.
# A common choice when fine-tuning a pretrained backbone; tune layer_decay_rate (1.0 = no
# decay; 0.75-0.95 is usual) together with lr.
#
# Needs mmpretrain (its LearningRateDecayOptimWrapperConstructor does the work; ours only
# gives it the backbone's depths): pip install --no-deps mmpretrain==1.2.0 importlib-metadata
# modelindex einops mat4py (bash tools/install.sh --tests installs it).
_base_ = './mask_rcnn_iformer_s_1x.py'

optim_wrapper = dict(
    constructor='iformer_mm.LayerDecayOptimWrapperConstructor',
    # the base config's weight-decay rules stay: none on norms, pos_embed, layer scales
    paramwise_cfg=dict(layer_decay_rate=0.9))
