"""Analysis tools' logic (the command-line wrappers are in ``tools/analysis/``).

* :mod:`.bench` — the benchmark harness (cases, runners, suites; ``tools/analysis/benchmark.py``);
* :mod:`.flops` — parameters and FLOPs counted the papers' way and with attention;
* :mod:`.baselines` — the authors' released iFormer data flow, rebuilt as a benchmark baseline;
* :mod:`.opcount` — ATen ops per step, the CPU-side proxy for GPU kernel launches;
* :mod:`.features` — build any backbone (config, timm name, module), collect block / mixer-branch
  outputs through forward hooks;
* :mod:`.frequency` — relative log amplitude of Fourier-transformed feature maps (paper Figs. 1, 4);
* :mod:`.cam` — Grad-CAM / Grad-CAM++ / EigenCAM through the ``grad-cam`` package (paper Fig. 5).

Submodules import heavy dependencies (matplotlib, grad-cam, mmdet) only when used.
"""
from .features import AnalysisError, LoadedModel, collect_feature_maps, find_layers, load_images, load_model, to_nchw

__all__ = ['AnalysisError', 'LoadedModel', 'collect_feature_maps', 'find_layers', 'load_images',
           'load_model', 'to_nchw']
