"""Parameters and multiply-adds, counted with ``torch.utils.flop_counter.FlopCounterMode``.

Conventions (``convention``):
  - ``macs`` (default): multiply-accumulates of the convolutions, matmuls, linears and neighbourhood kernels
    (logits and aggregation; gathers count zero) that FlopCounterMode sees, at batch size 1 in eval mode;
    FLOPs = 2 × MACs (SASA's "FLOPS"). BatchNorm, activations, pooling, softmax, biases and residual adds are not
    counted, which is how timm and Axial-DeepLab count.
  - ``san``: what SAN's official counter (hszhao/SAN ``util/complexity.py``, from ptflops) reports as "Flops":
    the above plus one op per conv-bias output, two per element through BatchNorm, one per ReLU output, one per
    element into a max or average pool, and one per subtraction output (SAN's Subtraction ops). That counter hooks
    modules only, so a batched matrix product outside a module counts zero, as it never sees one: SAN Table 4's
    clique-product row (1.9G) is exactly our count without its clique products, [φ(x_j)·ψ(x_k)]_jk (0.39G).
"""
import math
from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from attnvision.errors import ConfigError
from attnvision.ops.mapped import mapped_macs, patch_macs
from attnvision.ops.pointwise import pointwise_macs

__all__ = ["CONVENTIONS", "Complexity", "count_complexity", "count_params", "stage_names"]

CONVENTIONS = ("macs", "san")
aten = torch.ops.aten


def _raw(formula):
    formula._get_raw = True  # FlopCounterMode passes tensors, not shapes, to "raw" formulas
    return formula


def _ops_per_element(per_element: int, of_input: bool = False):
    """A formula counting ``per_element`` ops per output (or input) element; FlopCounterMode sums 2 per MAC."""
    @_raw
    def formula(*args, out_val=None, **kwargs) -> int:
        tensor = args[0] if of_input else (out_val[0] if isinstance(out_val, tuple) else out_val)
        return 2 * per_element * tensor.numel()
    return formula


def _unseen(*args, **kwargs) -> int:
    return 0


@_raw
def _conv_with_bias(*args, out_val=None, **kwargs) -> int:
    bias = args[2]
    return flop_registry[aten.convolution](*args, out_val=out_val, **kwargs) + (
        0 if bias is None else 2 * out_val.numel())


@_raw
def _batch_norm(x, weight, *args, out_val=None, **kwargs) -> int:
    return 2 * (2 if weight is not None else 1) * math.prod(x.shape)


@_raw
def _mapped_agg_with_bias(u, weight, bias, vp, groups, kh, kw, *args, out_val=None, **kwargs) -> int:
    """SAN's last γ conv fused into the aggregation (``ops.mapped``): the MACs of both, plus the conv's bias adds."""
    bias_adds = 0 if bias is None else u.shape[0] * bias.numel() * u.shape[-2] * u.shape[-1]
    return 2 * (mapped_macs(u.shape, weight.shape, vp.shape, kh, kw) + bias_adds)


@_raw
def _patch_map_with_bn_relu(centre, xp, scale, shift, weight, *args, out_val=None, **kwargs) -> int:
    """SAN's first γ BN → ReLU → 1×1 fused on the concatenated patch (``ops.mapped``): the conv's MACs plus two ops
    per element of the patch through the BN and one through the ReLU."""
    elements = centre.shape[0] * weight.shape[1] * centre.shape[-2] * centre.shape[-1]
    return 2 * (patch_macs(centre.shape, weight.shape) + 3 * elements)


@_raw
def _pointwise_with_bias(x, weight, bias, *args, out_val=None, **kwargs) -> int:
    """A 1×1 convolution run as a matrix product (``ops.pointwise``): its MACs plus its bias adds, as a conv."""
    return 2 * (pointwise_macs(x.shape, weight.shape) + (0 if bias is None else out_val.numel()))


@_raw
def _pair_attention_official(centre, xp, pos, scale1, shift1, w1, scale2, shift2, w2, bias2, vp, *args, out_val=None,
                             **kwargs) -> int:
    """SAN's pairwise γ fused with the aggregation (``ops.pairwise``), as the official counter sees the unfused
    modules, per pair: the subtraction, BN (2) and ReLU (1) on δ and on the hidden layer, both 1×1 maps and the last
    one's bias, and the aggregation (no softmax)."""
    b, relation, ho, wo = centre.shape
    per_pair = relation + 3 * w1.shape[1] + w1.numel() + 3 * w1.shape[0] + w2.numel() + vp.shape[1]
    per_pair += 0 if bias2 is None else bias2.numel()
    return 2 * b * ho * wo * (args[2] * args[3]) * per_pair


# BatchNorm is keyed by overload too: FlopCounterMode decomposes an op whose overload is not a key before it looks
# up the op's packet, and BatchNorm's decomposition is uncounted elementwise ops.
SAN_COUNTER = {aten.convolution: _conv_with_bias, aten.native_batch_norm: _batch_norm,
               aten.native_batch_norm.default: _batch_norm,
               aten._native_batch_norm_legit_no_training: _batch_norm,
               aten._native_batch_norm_legit_no_training.default: _batch_norm,
               aten.relu_: _ops_per_element(1), aten.relu: _ops_per_element(1), aten.sub: _ops_per_element(1),
               aten.max_pool2d_with_indices: _ops_per_element(1, of_input=True),
               aten.avg_pool2d: _ops_per_element(1, of_input=True), aten.mean: _ops_per_element(1, of_input=True),
               aten.bmm: _unseen, aten.baddbmm: _unseen,
               torch.ops.attnvision.mapped_agg: _mapped_agg_with_bias,
               torch.ops.attnvision.mapped_agg.default: _mapped_agg_with_bias,
               torch.ops.attnvision.patch_map: _patch_map_with_bn_relu,
               torch.ops.attnvision.patch_map.default: _patch_map_with_bn_relu,
               torch.ops.attnvision.pointwise: _pointwise_with_bias,
               torch.ops.attnvision.pointwise.default: _pointwise_with_bias,
               torch.ops.attnvision.pair_attention: _pair_attention_official,
               torch.ops.attnvision.pair_attention.default: _pair_attention_official}


@dataclass
class Complexity:
    params: int
    macs: int
    stages: List[Tuple[str, int, int]] = field(default_factory=list)  # (name, params, macs)

    @property
    def flops(self) -> int:
        return 2 * self.macs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def stage_names(model: nn.Module) -> List[str]:
    """Top-level children in order, with a ``stages`` Sequential expanded into ``stages.0``, ``stages.1``, ..."""
    names = []
    for name, child in model.named_children():
        if name == "stages" and isinstance(child, nn.Sequential):
            names += [f"stages.{i}" for i in range(len(child))]
        else:
            names.append(name)
    return names


@torch.no_grad()
def count_complexity(model: nn.Module, image_size: int, in_chans: int = 3, convention: str = "macs") -> Complexity:
    """Total and per-stage parameters and MACs (in ``convention``) of ``model`` on one ``in_chans``×S×S image."""
    if convention not in CONVENTIONS:
        raise ConfigError(f"convention={convention!r} is unknown; choose one of {', '.join(CONVENTIONS)}")
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=SAN_COUNTER if convention == "san" else None) as counter:
            model(torch.zeros(1, in_chans, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    flops_by_module = counter.get_flop_counts()
    root = type(model).__name__
    stages = []
    for name in stage_names(model):
        macs = sum(flops_by_module.get(f"{root}.{name}", {}).values()) // 2
        params = count_params(model.get_submodule(name))
        if params or macs:
            stages.append((name, params, macs))
    return Complexity(count_params(model), counter.get_total_flops() // 2, stages)
