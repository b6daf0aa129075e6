"""attnvision: local self-attention vision backbones and ResNets on one trainer. Importing it registers the models."""
from . import models  # noqa: F401  (registers every model with timm)

__version__ = "0.1.0"
