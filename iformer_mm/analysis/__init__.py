"""Look inside a backbone: the iFormer paper's frequency analysis (Figs. 1, 4) and Grad-CAM (Fig. 5).

* :mod:`.features` builds a model from a config, a timm name or an ``nn.Module``, picks layers
  by name, and collects their feature maps through forward hooks (as NCHW, whatever layout
  the layer writes).
* :mod:`.frequency` computes relative log amplitudes of Fourier-transformed feature maps
  (Park & Kim, ICLR 2022), per block and per Inception-mixer branch, and draws the figures.
* :mod:`.cam` wraps the ``grad-cam`` package (Grad-CAM, Grad-CAM++, EigenCAM) for
  classifiers, detectors and segmentors, and draws side-by-side panels.

The command-line front ends are ``tools/analysis/frequency.py`` and ``tools/analysis/cam.py``.
"""
from .features import (AnalysisError, LoadedModel, collect_feature_maps, find_layers, load_images,
                       load_model, reference_flow, to_nchw)

__all__ = ['AnalysisError', 'LoadedModel', 'collect_feature_maps', 'find_layers', 'load_images',
           'load_model', 'reference_flow', 'to_nchw']
