"""iformer_mm: iFormer (Inception Transformer) for timm, MMDetection 3.x and MMSegmentation 1.x."""
import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, 'iformer_mm', 'version.py')) as f:
    exec(f.read(), version)

DEPLOY = ['onnx', 'onnxruntime', 'onnxscript']

setup(
    name='iformer_mm',
    version=version['__version__'],
    description='iFormer (Inception Transformer, NeurIPS 2022) for timm, MMDetection and MMSegmentation',
    long_description=open(os.path.join(here, 'README.md')).read() if os.path.exists(os.path.join(here, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['iformer_mm', 'iformer_mm.*']),
    py_modules=['iformer_mm_torchvision_shim'],
    python_requires='>=3.10',  # torch 2.13
    # torch, torchvision, mmcv and timm are deliberately not declared: on CPU machines any
    # requirement that admits a newer torch makes pip pull a multi-GB CUDA build, and mmcv must be
    # built against the installed torch. tools/install.sh installs the tested stack in order
    # (timm >= 1.0.30, checked at run time by iformer_mm.engine.stack_check).
    install_requires=['numpy', 'packaging'],
    # `pip install -e .[deploy]`: ONNX export and ONNX Runtime (tools/deploy/, iformer_mm.deploy);
    # `pip install -e .[tests]` (or `bash tools/install.sh --tests`): what the test suite needs
    # beyond the stack, the deploy tools included (tests/test_deploy_onnx.py).
    extras_require={'deploy': DEPLOY, 'tests': ['pytest', 'pytest-timeout'] + DEPLOY},
    license='Apache-2.0',
    classifiers=['License :: OSI Approved :: Apache Software License', 'Programming Language :: Python :: 3',
                 'Programming Language :: Python :: 3 :: Only'],
)
