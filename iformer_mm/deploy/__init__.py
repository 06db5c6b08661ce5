"""Deployment: ONNX export of what the package ships, and running it in ONNX Runtime.

* :mod:`.onnx` — export segmentors (whole model), detector backbone + neck and timm classifiers
  with ``torch.onnx`` (the dynamo exporter), check them against PyTorch, run them in ONNX Runtime
  and in mmseg's own test loop.

Needs the ``deploy`` extra (``pip install -e ".[deploy]"``: onnx, onnxruntime, onnxscript); the
rest of the package does not import this.
"""
from .onnx import ExportError, ExportResult, export_onnx, onnx_session

__all__ = ['ExportError', 'ExportResult', 'export_onnx', 'onnx_session']
