"""SAN (Zhao et al., CVPR 2020): exact counts against the official code, the layers' semantics, fast = reference."""
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from attnvision.engine.complexity import count_complexity
from attnvision.errors import ConfigError
from attnvision.layers.san import PAIRWISE_RELATIONS, PATCHWISE_RELATIONS, SANPairwise, SANPatchwise
from attnvision.ops import set_default_impl

LAYERS = {10: (2, 1, 2, 4, 1), 15: (3, 2, 3, 5, 2), 19: (3, 3, 4, 6, 3)}
# Parameters of hszhao/SAN's san(sa_type, layers, [3,7,7,7,7], 1000), counted by instantiating the official model
# (its constructor needs no GPU). The paper rounds them to 10.5 / 14.1 / 17.6 and 11.8 / 16.2 / 20.5 M.
OFFICIAL_PARAMS = {"san10_pairwise": 10_531_848, "san15_pairwise": 14_065_436, "san19_pairwise": 17_596_156,
                   "san10_patchwise": 11_841_124, "san15_patchwise": 16_181_310, "san19_patchwise": 20_518_470}
# Our counts at 224: (multiply-adds, SAN's official-counter ops); the paper's "Flops" are 2.2 / 3.0 / 3.8 G
# (pairwise) and 1.9 / 2.6 / 3.3 G (patchwise), in the official counter's convention.
COUNTS = {"san10_pairwise": (2_043_668_868, 2_155_268_622), "san15_pairwise": (2_858_757_016, 3_022_716_308),
          "san19_pairwise": (3_636_263_340, 3_844_152_602), "san10_patchwise": (1_791_048_192, 1_865_421_568),
          "san15_patchwise": (2_478_283_776, 2_582_850_560), "san19_patchwise": (3_130_145_280, 3_258_984_704)}
PAPER_GFLOPS = {"san10_pairwise": 2.2, "san15_pairwise": 3.0, "san19_pairwise": 3.8, "san10_patchwise": 1.9,
                "san15_patchwise": 2.6, "san19_patchwise": 3.3}


def official_counter_ops(layers, pairwise: bool, kernels=(3, 7, 7, 7, 7), size=224, classes=1000) -> int:
    """The official counter's total for SAN, summed by hand from the network's layer list: conv MACs plus bias
    adds, 2 per BN element, 1 per ReLU, pool input or subtraction output, K per aggregation output."""
    hw = size * size
    ops = 3 * 64 * hw + 3 * 64 * hw  # stem conv, BN, ReLU
    c_in, res = 64, size
    for blocks, k, c in zip(layers, kernels, (64, 256, 512, 1024, 2048)):
        ops += c_in * res * res  # max-pool
        res //= 2
        hw, kk, rel, mid = res * res, k * k, c // 16, c // 4
        g = mid // 8
        ops += c_in * c * hw  # transition conv
        for _ in range(blocks):
            ops += 3 * c * hw + 2 * (c * rel + rel) * hw + (c * mid + mid) * hw  # BN, ReLU, phi, psi, beta
            if pairwise:
                d = rel + 2
                ops += rel * kk * hw + 2 * kk * hw + 6 * hw  # subtraction, position subtraction, position conv
                ops += 3 * d * kk * hw + d * rel * kk * hw + 3 * rel * kk * hw + rel * g * kk * hw + g * kk * hw
            else:
                d = rel * (kk + 1)
                ops += 3 * d * hw + d * g * hw + 3 * g * hw + g * g * kk * hw + g * kk * hw
            ops += mid * hw * kk + 3 * mid * hw + (mid * c + c) * hw  # aggregation, BN, ReLU, out conv
        ops += 3 * c * hw  # BN, ReLU
        c_in = c
    return ops + 2048 * 7 * 7 + 2048 * classes  # average pool, classifier


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_counts_at_224_equal_the_official_model(name):
    model = timm.create_model(name)
    macs = count_complexity(model, 224)
    ops = count_complexity(model, 224, convention="san")
    if name == "san10_pairwise":  # the fused γ counts as the modules it fuses
        fused = timm.create_model(name, fused_gamma=True)
        assert (count_complexity(fused, 224).macs, count_complexity(fused, 224, convention="san").macs) == \
            (macs.macs, ops.macs)
    assert macs.params == OFFICIAL_PARAMS[name]
    assert (macs.macs, ops.macs) == COUNTS[name]
    depth, kind = int(name[3:5]), name.split("_")[1]
    assert ops.macs == official_counter_ops(LAYERS[depth], kind == "pairwise")
    assert abs(ops.macs / 1e9 / PAPER_GFLOPS[name] - 1) < 0.05
    assert f"{macs.params / 1e6:.1f}" == {10: "10.5", 15: "14.1", 19: "17.6"}[depth] if kind == "pairwise" else \
        f"{macs.params / 1e6:.1f}" == {10: "11.8", 15: "16.2", 19: "20.5"}[depth]


def test_registered_with_timm_and_small_variant_shapes():
    assert {f"san{d}_{k}" for d in LAYERS for k in ("pairwise", "patchwise")} <= set(timm.list_models("san*"))
    model = timm.create_model("test_san_patchwise", num_classes=7)
    assert [f["reduction"] for f in model.feature_info] == [1, 1, 1, 2, 4, 8]  # stages at 32/32/16/8/4
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    ks = [stage[2].attn.footprint.kernel_size[0] for stage in model.stages]
    assert ks == [3, 7, 7, 7, 7]
    ks = [stage[2].attn.footprint.kernel_size[0]
          for stage in timm.create_model("test_san_pairwise", kernel_size=5).stages]
    assert ks == [3, 5, 5, 5, 5]
    ks = [stage[2].attn.footprint.kernel_size[0]
          for stage in timm.create_model("test_san_pairwise", kernel_sizes=(3, 3, 5, 5, 7)).stages]
    assert ks == [3, 3, 5, 5, 7]


def test_zero_init_last_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 8, 8)
    for zero_init_last in (True, False):
        model = timm.create_model("test_san_patchwise", zero_init_last=zero_init_last).eval()
        block = model.stages[1][2]
        assert torch.equal(block(x), x) == zero_init_last


# The γ-bias of pairwise adds one constant to all K logits of a weight channel, which the softmax cancels, and
# the position conv's bias cancels in p_i - p_j: both official parameters get exactly no gradient signal. Where δ is
# additive in φ and ψ (subtraction, summation, concatenation), their biases shift δ's channels by constants, which
# γ's first BatchNorm (batch statistics, reflected borders) removes: no gradient signal either.
REDUNDANT = ("attn.gamma.5.bias", "attn.position.bias")
ADDITIVE = ("subtraction", "summation", "concatenation")


@pytest.mark.parametrize("kind,relation", [("pairwise", r) for r in PAIRWISE_RELATIONS] +
                         [("patchwise", r) for r in PATCHWISE_RELATIONS])
def test_every_relation_trains(kind, relation):
    torch.manual_seed(0)
    model = timm.create_model(f"test_san_{kind}", relation=relation, num_classes=5, zero_init_last=False)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5)
    F.cross_entropy(out, torch.tensor([1, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        redundant = REDUNDANT * (kind == "pairwise") + ("attn.phi.bias", "attn.psi.bias") * (relation in ADDITIVE)
        if name.endswith(redundant):
            assert p.grad.abs().max() < 1e-5 * max(1., p.grad.numel()), name
        else:
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind,relation", [("pairwise", "subtraction"), ("pairwise", "dot"),
                                           ("patchwise", "concatenation"), ("patchwise", "clique"),
                                           ("patchwise", "star")])
def test_fast_and_reference_ops_give_the_same_network(kind, relation):
    torch.manual_seed(0)
    model = timm.create_model(f"test_san_{kind}", relation=relation, num_classes=5, zero_init_last=False).eval()
    x = torch.randn(2, 3, 32, 32)
    outs, grads = [], []
    try:
        for impl in ("reference", "fast"):
            set_default_impl(impl)
            model.zero_grad()
            y = model(x)
            y.square().sum().backward()
            outs.append(y)
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    finally:
        set_default_impl("auto")
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-4)


def _patches(t, k):
    """B×C×K×H×W neighbourhoods of ``t`` under F.pad(mode='reflect'), row-major offsets."""
    b, c, h, w = t.shape
    return F.unfold(F.pad(t, (k // 2,) * 4, mode="reflect"), k).view(b, c, k * k, h, w)


def test_patchwise_layer_is_the_official_reflect_unfold_computation():
    """An independent unfold transcription of the official semantics: ψ reflection-padded and unfolded after
    φ(x_i), γ read as (weight channel, offset), β channel c aggregated with weight channel c mod C_out/share."""
    torch.manual_seed(0)
    k, dim, dim_out = 3, 32, 16
    layer = SANPatchwise(dim, dim_out, kernel_size=k).eval()
    x = torch.randn(2, dim, 6, 7)
    b, h, w = 2, 6, 7
    delta = torch.cat([layer.phi(x), _patches(layer.psi(x), k).flatten(1, 2)], 1)
    weights = layer.gamma(delta).view(b, dim_out // 8, k * k, h, w)
    v = _patches(layer.beta(x), k)  # B, C_out, K, H, W
    expected = (weights.repeat(1, 8, 1, 1, 1) * v).sum(2)  # channel c uses weight channel c mod (C_out / 8)
    for impl in ("reference", "fast"):
        layer.impl = impl
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_pairwise_position_encoding_is_reflected_relative_coordinates():
    layer = SANPairwise(32, 16, kernel_size=3).eval()
    with torch.no_grad():
        layer.position.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        layer.position.bias.fill_(5.)
    pos = layer._position_encoding(torch.zeros(1, 32, 4, 5))  # 1, 2, K, H, W
    xs, ys = torch.linspace(-1, 1, 5), torch.linspace(-1, 1, 4)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))[None]  # 1, 2, H, W: x then y
    torch.testing.assert_close(pos, grid.unsqueeze(2) - _patches(grid, 3))
    # at the top-left pixel the up-left neighbour mirrors to (1, 1): p_i - p_j = -(one step in x, one in y)
    torch.testing.assert_close(pos[0, :, 0, 0, 0], torch.tensor([-0.5, -2 / 3]))


def test_absolute_position_encoding_is_the_neighbours_own_p_j():
    """Table 8's absolute encoding gives p_j where the relative one gives p_i - p_j, from the same learned map."""
    torch.manual_seed(0)
    relative, absolute = (SANPairwise(32, 16, kernel_size=3, position_encoding=e) for e in ("relative", "absolute"))
    absolute.position.load_state_dict(relative.position.state_dict())
    x = torch.zeros(1, 32, 4, 5)
    p_j = absolute._position_encoding(x)  # 1, 2, K, H, W
    centre = p_j[:, :, 4:5]  # the footprint's middle offset is the pixel itself: p_i
    torch.testing.assert_close(centre - p_j, relative._position_encoding(x))
    assert not torch.allclose(p_j, relative._position_encoding(x))
    assert sum(p.numel() for p in absolute.parameters()) == sum(p.numel() for p in relative.parameters())
    with pytest.raises(ConfigError, match="position_encoding=True is unknown; choose one of relative, absolute, none"):
        SANPairwise(32, 16, position_encoding=True)


@pytest.mark.parametrize("position_encoding", ["none", "relative"])
def test_pairwise_layer_is_translation_equivariant_inside(position_encoding):
    """Relative relations (and the relative position encoding, since the coordinate grid is linear) only see
    offsets, so shifting the input shifts the output, away from the reflected borders."""
    torch.manual_seed(0)
    k, shift = 5, (2, 3)
    layer = SANPairwise(32, 16, kernel_size=k, position_encoding=position_encoding).eval()
    x = torch.randn(1, 32, 16, 16)
    y = layer(x)
    y_shifted = layer(torch.roll(x, shift, dims=(2, 3)))
    m = k // 2 + max(shift)  # interior: windows that never reach a border or the rolled-in columns
    torch.testing.assert_close(y_shifted[..., m + shift[0]:16 - m, m + shift[1]:16 - m],
                               y[..., m:16 - m - shift[0], m:16 - m - shift[1]], rtol=1e-4, atol=1e-5)


def test_patchwise_weights_depend_on_the_whole_patch_pairwise_only_on_the_pair():
    torch.manual_seed(0)
    x = torch.randn(1, 32, 7, 7)
    x2 = x.clone()
    x2[0, :, 2, 4] += 3.  # the neighbour at offset (-1, +1) of the centre pixel (3, 3)
    changed_offset = 2  # row-major offset (dy, dx) = (-1, +1) in a 3×3 window
    for layer in (SANPatchwise(32, 16, kernel_size=3).eval(),
                  SANPairwise(32, 16, kernel_size=3, normalization="none").eval()):
        w, w2 = layer.weights(x)[0, :, :, 3, 3], layer.weights(x2)[0, :, :, 3, 3]  # G, K at pixel (3, 3)
        moved = (w - w2).abs().amax(0) > 1e-6  # which offsets' weights changed
        if isinstance(layer, SANPatchwise):
            assert moved.all()  # every location's weight sees the changed neighbour
        else:
            assert moved.tolist() == [o == changed_offset for o in range(9)]


@pytest.mark.parametrize("normalization", ["softmax", "none"])
def test_mask_padding_gives_zero_weight_outside(normalization):
    torch.manual_seed(0)
    layer = SANPairwise(32, 16, kernel_size=3, padding="mask", normalization=normalization).eval()
    x = torch.randn(1, 32, 5, 6)
    weights = layer.weights(x)  # 1, 2, 9, 5, 6
    valid = layer.footprint.valid_mask(5, 6)
    assert (weights[:, :, ~valid] == 0).all() and (weights[:, :, valid] != 0).all()
    if normalization == "softmax":
        torch.testing.assert_close(weights.sum(2), torch.ones(1, 2, 5, 6))
    v = F.unfold(F.pad(layer.beta(x), (1, 1, 1, 1)), 3).view(1, 16, 9, 5, 6)
    torch.testing.assert_close(layer(x), (weights.repeat(1, 8, 1, 1, 1) * v).sum(2), rtol=1e-5, atol=1e-5)


def test_bad_options_name_the_allowed_values():
    with pytest.raises(ConfigError, match="relation='cosine'.*subtraction, summation"):
        SANPairwise(32, 16, relation="cosine")
    with pytest.raises(ConfigError, match="relation='subtraction'.*concatenation, star, clique"):
        SANPatchwise(32, 16, relation="subtraction")
    with pytest.raises(ConfigError, match="padding='circular'"):
        SANPatchwise(32, 16, padding="circular")
    with pytest.raises(ConfigError, match="reflect padding .* smaller kernel_size"):
        SANPatchwise(32, 16, kernel_size=9)(torch.randn(1, 32, 4, 4))


@pytest.mark.parametrize("kind,depth,params", [("pairwise", 1, 10_495_328), ("pairwise", 3, 10_567_896),
                                               ("patchwise", 1, 53_498_628), ("patchwise", 3, 12_736_580)])
def test_mapping_depth_reproduces_table5_params(kind, depth, params):
    """The paper's Table 5: γ = L / L-R-L-R-L gives 10.5 / 10.6 M (pairwise) and 53.5 / 12.7 M (patchwise)."""
    model = timm.create_model(f"san10_{kind}", mapping_depth=depth)
    n = sum(p.numel() for p in model.parameters())
    assert n == params
    paper = {("pairwise", 1): "10.5", ("pairwise", 3): "10.6", ("patchwise", 1): "53.5", ("patchwise", 3): "12.7"}
    assert f"{n / 1e6:.1f}" == paper[kind, depth]


def test_relation_params_reproduce_table4():
    """The paper's Table 4: pairwise concatenation 10.6 M, dot product 10.5 M; patchwise star 10.9 M, clique 11.5 M."""
    rows = {("pairwise", "summation"): "10.5", ("pairwise", "concatenation"): "10.6",
            ("pairwise", "hadamard"): "10.5", ("pairwise", "dot"): "10.5",
            ("patchwise", "star"): "10.9", ("patchwise", "clique"): "11.5"}
    for (kind, relation), paper in rows.items():
        model = timm.create_model(f"san10_{kind}", relation=relation)
        assert f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}" == paper, (kind, relation)


@pytest.mark.parametrize("attention", [SANPairwise, SANPatchwise])
def test_shared_phi_psi_is_the_separate_layer_with_psi_set_to_phi(attention):
    torch.manual_seed(0)
    shared = attention(32, 16, kernel_size=3, shared_transforms="phi_psi").eval()
    separate = attention(32, 16, kernel_size=3).eval()
    assert shared.psi is None
    state = shared.state_dict()
    state.update({k.replace("phi.", "psi."): v for k, v in state.items() if k.startswith("phi.")})
    separate.load_state_dict(state)
    x = torch.randn(2, 32, 9, 8)
    torch.testing.assert_close(shared(x), separate(x))


@pytest.mark.parametrize("attention", [SANPairwise, SANPatchwise])
def test_shared_phi_psi_beta_relates_the_values_themselves(attention):
    """φ = ψ = β: one C → C_out map whose output is the relation's input and the values."""
    layer = attention(32, 16, kernel_size=3, shared_transforms="phi_psi_beta")
    assert layer.psi is None and layer.beta is None and layer.phi.out_channels == layer.relation_planes == 16
    phi, psi, beta = layer.project(torch.randn(1, 32, 5, 5))
    assert phi is psi is beta and phi.shape == (1, 16, 5, 5)
    y = layer(torch.randn(2, 32, 6, 7, requires_grad=True))
    y.square().sum().backward()
    assert y.shape == (2, 16, 6, 7) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    with pytest.raises(ConfigError, match="shared_transforms='all' is unknown; choose one of none, phi_psi, phi_psi_beta"):
        attention(32, 16, shared_transforms="all")


def test_shared_transforms_reproduce_table6_params():
    """The paper's Table 6: pairwise 9.5 / 10.0 / 10.5 M, patchwise 13.4 / 11.3 / 11.8 M (φ = ψ = β / φ = ψ / none)."""
    exact = {("pairwise", "phi_psi_beta"): 9_515_720, ("pairwise", "phi_psi"): 9_969_712,
             ("pairwise", "none"): OFFICIAL_PARAMS["san10_pairwise"], ("patchwise", "phi_psi_beta"): 13_487_412,
             ("patchwise", "phi_psi"): 11_278_988, ("patchwise", "none"): OFFICIAL_PARAMS["san10_patchwise"]}
    paper = {("pairwise", "phi_psi_beta"): 9.5, ("pairwise", "phi_psi"): 10.0, ("pairwise", "none"): 10.5,
             ("patchwise", "phi_psi_beta"): 13.4, ("patchwise", "phi_psi"): 11.3, ("patchwise", "none"): 11.8}
    for (kind, shared), params in exact.items():
        model = timm.create_model(f"san10_{kind}", shared_transforms=shared)
        assert sum(p.numel() for p in model.parameters()) == params, (kind, shared)
        assert abs(params / 1e6 - paper[kind, shared]) / paper[kind, shared] < 0.007, (kind, shared)


def test_clique_products_count_zero_in_sans_convention():
    """SAN's counter hooks modules, so the clique products (an einsum) are not in its Flops: Table 4 gives 1.9G."""
    model = timm.create_model("san10_patchwise", relation="clique").eval()
    pixels = {}

    def record_pixels(layer, args, out):
        pixels[layer] = out.shape[-2] * out.shape[-1]

    for layer in (m for m in model.modules() if isinstance(m, SANPatchwise)):
        layer.register_forward_hook(record_pixels)
    macs, san = (count_complexity(model, 224, convention=c).macs for c in ("macs", "san"))
    # The clique products of every layer: C/16 relation channels × K² pairs, per output pixel.
    cliques = sum(m.rel_planes * m.footprint.num_offsets ** 2 * hw for m, hw in pixels.items())
    assert len(pixels) == 10 and cliques > 0.38e9
    assert san == 1_914_602_819 and f"{san / 1e9:.1f}" == "1.9"
    assert macs - cliques < san < macs


def _saved_numels(fn):
    """The element counts of the tensors autograd keeps for the backward while ``fn()`` runs."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sizes


FUSED = [(SANPatchwise, dict(padding="reflect")), (SANPatchwise, dict(padding="zero", kernel_size=5)),
         (SANPatchwise, dict(padding="mask", dilation=2, mapping_depth=3)), (SANPatchwise, dict(stride=2)),
         (SANPatchwise, dict(padding="zero", mapping_depth=1)), (SANPatchwise, dict(padding="mask", relation="star")),
         (SANPairwise, dict(padding="reflect")), (SANPairwise, dict(padding="zero", stride=2)),
         (SANPairwise, dict(padding="mask", dilation=2)), (SANPairwise, dict(padding="mask", normalization="none")),
         (SANPairwise, dict(position_encoding="absolute", kernel_size=5)),
         (SANPairwise, dict(padding="zero", position_encoding="none", normalization="none"))]
FUSED = [(a, dict(o, fused_gamma=True) if a is SANPairwise else o) for a, o in FUSED]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("attention,options", FUSED, ids=[f"{a.__name__}-{o}" for a, o in FUSED])
def test_fused_gamma_is_the_unfused_computation(training, attention, options):
    """The fast paths run γ fused with the neighbourhood ops (patchwise: its first BN → ReLU → 1×1 inside the patch
    gather, its last 1×1 inside the aggregation; pairwise subtraction: γ, mask, softmax and aggregation per batch
    chunk), γ's BatchNorms from statistics that need no K-expanded tensor: outputs, every gradient and the
    BatchNorms' running statistics equal the unfused layer's in float64, in training and in eval mode (after a
    training step, so the running statistics are not the initial ones)."""
    from conftest import reference_and_fast_grads
    torch.manual_seed(0)
    layer = attention(32, 16, kernel_size=options.pop("kernel_size", 3), **options).double()
    with torch.no_grad():
        for bn in (m for m in layer.gamma if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 32, 9, 11, dtype=torch.float64, requires_grad=True)
    layer(x)  # one training step of the running statistics
    layer.train(training)
    fast_layer = copy.deepcopy(layer)
    reference, fast = reference_and_fast_grads(layer, x, fast_layer)
    for a, b in zip(reference, fast):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * max(1., a.abs().max().item()))
    for a, b in zip(layer.buffers(), fast_layer.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert fast_layer.gamma[0].num_batches_tracked.item() == 1 + training


@pytest.mark.parametrize("attention", [SANPatchwise, SANPairwise])
def test_fused_gamma_keeps_nothing_k_expanded_for_the_backward(attention):
    """The unfused layers keep γ's K-expanded tensors (patchwise: δ with Cr·(K+1) channels and α with G·K, 3.1 and
    6.1 times the layer's 64 at k = 7; pairwise: everything from δ to α, K·(Cr + 2) channels and more); the fused
    paths keep only tensors of about the input's size (the largest: the values padded by the window's reach,
    38² / 32² = 1.41 times)."""
    torch.manual_seed(0)
    layer = attention(64, 64, kernel_size=7, **({"fused_gamma": True} if attention is SANPairwise else {}))
    x = torch.randn(2, 64, 32, 32, requires_grad=True)
    largest = {}
    for impl in ("reference", "fast"):
        layer.impl = impl
        largest[impl] = max(_saved_numels(lambda: layer(x)))
    assert largest["reference"] >= 6 * x.numel()
    assert largest["fast"] <= 1.5 * x.numel()


def test_gamma_pointwise_conv_is_the_convolution():
    """γ's 1×1 convolutions run as matrix products: the convolution's outputs, gradients and FLOP count, on the
    B × C × K × P relation tensors of the pairwise layer; under autocast in bf16, as a convolution is."""
    from torch.utils.flop_counter import FlopCounterMode

    from attnvision.layers.san import PointwiseConv
    torch.manual_seed(0)
    conv = PointwiseConv(6, 4, bias=True).double()
    x = torch.randn(2, 6, 9, 5, 7, dtype=torch.float64, requires_grad=True)
    outs = []
    for fn in (conv, lambda t: F.conv3d(t, conv.weight[..., None], conv.bias)):
        conv.zero_grad()
        x.grad = None
        with FlopCounterMode(display=False) as counter:
            y = fn(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs.append([y, x.grad, conv.weight.grad, conv.bias.grad, counter.get_total_flops()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv.float()(x.float()).dtype == torch.bfloat16
