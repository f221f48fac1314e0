"""sharpshift: self-supervised image representations that are sharpness-aware, shift-aware and discriminative."""
from sharpshift.export import load_backbone

__version__ = "0.1.0"
__all__ = ["load_backbone", "__version__"]
