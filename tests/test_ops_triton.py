"""The Triton neighbourhood kernels against an unfold reference, run by Triton's CPU interpreter.

TRITON_INTERPRET must be set before triton is first imported, and this pytest process may already have imported it,
so the checks run in a child interpreter.
"""
import os
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPT = r"""
import itertools
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from attnvision.ops.triton_nbr import nbr_agg, nbr_agg_t, nbr_dot

torch.manual_seed(0)


def patches(xp, kh, kw, s, dil, Ho, Wo):
    N, D, Hp, Wp = xp.shape
    Hu, Wu = (Hp - dil * (kh - 1) - 1) // s + 1, (Wp - dil * (kw - 1) - 1) // s + 1
    # unfold covers every window that fits, which is more than Ho x Wo when the caller padded with slack
    return F.unfold(xp, (kh, kw), dilation=dil, stride=s).view(N, D, kh * kw, Hu, Wu)[..., :Ho, :Wo]


def ref_dot(q, kp, *geom):
    return (q[:, :, None] * patches(kp, *geom, *q.shape[2:])).sum(1)


def ref_agg(w, vp, *geom):
    return (w[:, None] * patches(vp, *geom, *w.shape[2:])).sum(2)


def ref_agg_t(w, u, kh, kw, s, dil, Hp, Wp):
    vp = torch.zeros(u.shape[:2] + (Hp, Wp), dtype=u.dtype, requires_grad=True)
    return torch.autograd.grad((ref_agg(w, vp, kh, kw, s, dil) * u).sum(), vp)[0]


def inputs(N, D, Ho, Wo, kh, kw, s, dil, slack=0, dtype=torch.float32):
    Hp, Wp = (Ho - 1) * s + (kh - 1) * dil + 1 + slack, (Wo - 1) * s + (kw - 1) * dil + 1 + slack
    K = kh * kw
    return [torch.randn(shape).to(dtype) for shape in
            [(N, D, Ho, Wo), (N, D, Hp, Wp), (N, K, Ho, Wo), (N, D, Ho, Wo)]] + [Hp, Wp]


def check(N, D, Ho, Wo, kh, kw, s, dil, slack):
    geom = (kh, kw, s, dil)
    q, kp, w, u, Hp, Wp = inputs(N, D, Ho, Wo, *geom, slack)
    dot, agg, agg_t = nbr_dot(q, kp, *geom), nbr_agg(w, kp, *geom), nbr_agg_t(w, u, *geom, Hp, Wp)
    assert_close(dot, ref_dot(q, kp, *geom), rtol=1e-5, atol=1e-5)
    assert_close(agg, ref_agg(w, kp, *geom), rtol=1e-5, atol=1e-5)
    assert_close(agg_t, ref_agg_t(w, u, *geom, Hp, Wp), rtol=1e-5, atol=1e-5)
    # adjoint identities: <agg(w, vp), u> = <vp, agg_t(w, u)> and <dot(q, kp), w> = <kp, agg_t(w, q)>
    assert_close((agg * u).sum(), (kp * agg_t).sum(), rtol=1e-5, atol=1e-4)
    assert_close((dot * w).sum(), (kp * nbr_agg_t(w, q, *geom, Hp, Wp)).sum(), rtol=1e-5, atol=1e-4)


for (kh, kw), s, dil in itertools.product([(1, 1), (3, 3), (3, 5)], [1, 2], [1, 2]):
    check(1, 3, 5, 5, kh, kw, s, dil, slack=(s + dil) % 2)
# batch offsets, several x blocks, several channel blocks with a ragged last one, a non-square padded plane
check(2, 20, 2, 37, 7, 7, 1, 1, slack=1)
check(2, 17, 3, 9, 5, 3, 2, 3, slack=0)

for dtype, tol in [(torch.float16, 1e-2), (torch.bfloat16, 5e-2), (torch.float64, 1e-12)]:
    geom = (3, 3, 2, 1)
    q, kp, w, u, Hp, Wp = inputs(2, 3, 5, 5, *geom, dtype=dtype)
    ref = torch.float64
    for got, want in [(nbr_dot(q, kp, *geom), ref_dot(q.to(ref), kp.to(ref), *geom)),
                      (nbr_agg(w, kp, *geom), ref_agg(w.to(ref), kp.to(ref), *geom)),
                      (nbr_agg_t(w, u, *geom, Hp, Wp), ref_agg_t(w.to(ref), u.to(ref), *geom, Hp, Wp))]:
        assert got.dtype == dtype, (got.dtype, dtype)
        assert_close(got.to(ref), want, rtol=tol, atol=tol)

q, kp, w, u, Hp, Wp = inputs(2, 3, 5, 5, 3, 3, 1, 1)
for call, err, match in [
        (lambda: nbr_dot(q, kp[..., :-1], 3, 3), ValueError, "too small"),
        (lambda: nbr_dot(q, kp[:, :2], 3, 3), ValueError, "disagree on D"),
        (lambda: nbr_dot(q, kp[:1], 3, 3), ValueError, "disagree on N"),
        (lambda: nbr_agg(w[:, :4], kp, 3, 3), ValueError, "offsets"),
        (lambda: nbr_agg_t(w, u, 3, 3, 1, 1, Hp - 1, Wp), ValueError, "too small"),
        (lambda: nbr_agg(w, kp, 3, 3, 0), ValueError, ">= 1"),
        (lambda: nbr_agg(w.half(), kp, 3, 3), TypeError, "share a dtype"),
        (lambda: nbr_dot(q.int(), kp.int(), 3, 3), TypeError, "float16")]:
    try:
        call()
    except err as e:
        assert match in str(e), e
    else:
        raise AssertionError(f"expected {err.__name__} matching {match!r}")
print("ok")
"""


@pytest.mark.slow
def test_triton_nbr_kernels_match_unfold_reference():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
