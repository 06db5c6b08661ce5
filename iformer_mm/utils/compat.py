"""Environment fixes that must run before third-party imports (see :mod:`iformer_mm_tvfix`)."""
from iformer_mm_tvfix import ensure_torchvision_importable, install_import_hook

__all__ = ['ensure_torchvision_importable', 'install_import_hook']
