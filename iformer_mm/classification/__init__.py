"""The logic of ``tools/classification/`` (ImageNet-style training and validation of the timm
models): :mod:`.common` holds what ``train.py`` and ``validate.py`` share (logging, weights,
data checks, top-k evaluation)."""
