"""The shared core of the four families: footprints, neighbourhood kernels and the primitives built on them."""
from .footprint import PADDING_MODES, Footprint
from .kernels import nbr_macs
from .primitives import (IMPLS, axial_footprint, local_aggregate, local_attention, local_logits, local_patches,
                         local_softmax, local_subtraction, mask_outside, resolve_impl, set_default_impl)

__all__ = ["Footprint", "PADDING_MODES", "IMPLS", "axial_footprint", "local_aggregate", "local_attention",
           "local_logits", "local_patches", "local_softmax", "local_subtraction", "mask_outside", "nbr_macs",
           "resolve_impl", "set_default_impl"]
