"""iformer_mm: iFormer (Inception Transformer) for timm, MMDetection 3.x and MMSegmentation 1.x."""
import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
version = {}
with open(os.path.join(here, 'iformer_mm', 'version.py')) as f:
    exec(f.read(), version)

setup(
    name='iformer_mm',
    version=version['__version__'],
    description='iFormer (Inception Transformer, NeurIPS 2022) for timm, MMDetection and MMSegmentation',
    long_description=open(os.path.join(here, 'README.md')).read() if os.path.exists(os.path.join(here, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['iformer_mm', 'iformer_mm.*']),
    py_modules=['iformer_mm_tvfix'],
    python_requires='>=3.8',
    # torch is deliberately unpinned-but-bounded here: pins that admit a newer torch make pip pull
    # a CUDA build on CPU machines. tools/install.sh installs the tested stack in the right order.
    install_requires=['torch>=1.13', 'numpy'],
    extras_require={
        'mm': ['mmengine>=0.10.0,<1.0', 'mmcv>=2.0.0,<2.2.0'],
        'det': ['mmdet>=3.0.0,<3.4', 'pycocotools'],
        'seg': ['mmsegmentation>=1.0.0,<1.3', 'ftfy', 'regex'],
        'timm': ['timm>=1.0.9'],
        'tests': ['pytest', 'pytest-timeout'],
    },
    license='Apache-2.0',
    classifiers=['License :: OSI Approved :: Apache Software License', 'Programming Language :: Python :: 3'],
)
