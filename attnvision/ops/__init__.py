"""The shared core of the four families: footprints, neighbourhood kernels and the primitives built on them."""
from .footprint import PADDING_MODES, Footprint
from .kernels import nbr_macs
from .primitives import (IMPLS, axial_footprint, axial_image, axial_lines, dense_axial_logits, dense_axial_outputs,
                         key_position_term, local_aggregate, local_attention, local_logits, local_patches,
                         local_softmax, local_subtraction, mask_outside, neighbour_index, query_position_term,
                         requested_impl, resolve_impl, set_default_impl)

__all__ = ["Footprint", "PADDING_MODES", "IMPLS", "axial_footprint", "local_aggregate", "local_attention",
           "local_logits", "local_patches", "local_softmax", "local_subtraction", "mask_outside", "nbr_macs",
           "neighbour_index", "key_position_term", "query_position_term", "requested_impl", "resolve_impl",
           "set_default_impl", "axial_lines", "axial_image", "dense_axial_logits", "dense_axial_outputs"]
