"""Spatial layers: the k×k operators a bottleneck block can swap in for its 3×3 convolution.

Every spatial layer shares one signature, ``layer(dim, dim_out, stride=1, kernel_size=..., num_heads=..., **kw)``,
so a network picks one by name (``spatial_layer='conv'``) and the families register theirs here.
"""
from typing import Callable, Union

from .axial import AxialAttention, AxialSpatial
from .conv import ConvSpatial
from .hybrid import HybridSpatial
from .local_relation import LocalRelation
from .ps_attention import PSAttention
from .san import SANPairwise, SANPatchwise
from .sasa import SASAttention
from .sasa_stem import SASAStem

__all__ = ["AxialAttention", "AxialSpatial", "ConvSpatial", "HybridSpatial", "LocalRelation", "PSAttention",
           "SANPairwise", "SANPatchwise", "SASAttention", "SASAStem", "get_spatial_layer", "register_spatial_layer",
           "SPATIAL_LAYERS"]

SPATIAL_LAYERS: dict = {"conv": ConvSpatial, "san_pairwise": SANPairwise, "san_patchwise": SANPatchwise,
                        "sasa": SASAttention, "local_relation": LocalRelation,
                        "axial": AxialSpatial, "ps_attention": PSAttention, "hybrid": HybridSpatial}


def register_spatial_layer(name: str, layer_cls: Callable) -> Callable:
    SPATIAL_LAYERS[name] = layer_cls
    return layer_cls


def get_spatial_layer(layer: Union[str, Callable]) -> Callable:
    """Resolve a spatial layer given by name (as configs do) or as a class/factory (as code may)."""
    if callable(layer):
        return layer
    if layer not in SPATIAL_LAYERS:
        raise ValueError(f"spatial_layer={layer!r} is unknown; choose one of {sorted(SPATIAL_LAYERS)}")
    return SPATIAL_LAYERS[layer]
