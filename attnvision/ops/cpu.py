"""Build and call the C kernels in ``csrc/`` (the CPU fast path of the neighbourhood ops): ``nbr_cpu.c`` (the three
neighbourhood kernels), ``attention_cpu.c`` (fused local attention) and ``moments_cpu.c`` (the logits' sums and
sums of squares).

The sources are compiled with the system C compiler (``$CC``, default ``cc``) on first use, for this machine
(``-O3 -march=native -fopenmp``), into ``$AV_CACHE_DIR`` (default ``~/.cache/attnvision``), keyed by the source,
flags and CPU; it takes about a second. Kernels are called through ctypes on raw data pointers of contiguous
float32 / float64 tensors. Without a working compiler ``available()`` is False and the ops fall back to reference.
"""
import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["available", "vector_bytes", "launch", "dot_moments", "attention_forward", "attention_backward"]

CSRC = Path(__file__).parent / "csrc"
SOURCES = (CSRC / "nbr_cpu.c", CSRC / "attention_cpu.c", CSRC / "moments_cpu.c")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
KERNELS = ("nbr_dot", "nbr_agg", "nbr_agg_t", "nbr_agg_tg")
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _cpu_id() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return platform.machine() + platform.processor() + flags


@lru_cache(maxsize=None)
def _library():
    compiler = os.environ.get("CC", "cc")
    source = b"".join(path.read_bytes() for path in sorted(CSRC.iterdir()) if path.suffix in (".c", ".h"))
    tag = hashlib.sha1(source + " ".join([compiler, *FLAGS, _cpu_id()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("AV_CACHE_DIR", Path.home() / ".cache" / "attnvision"))
    lib_path = cache / f"nbr_cpu_{tag}.so"
    if not lib_path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".so")
        os.close(fd)
        try:
            subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", tmp, "-lm"], check=True, capture_output=True,
                           text=True)
            os.replace(tmp, lib_path)  # atomic: concurrent first uses never load a half-written library
        except (OSError, subprocess.CalledProcessError) as err:
            Path(tmp).unlink(missing_ok=True)
            detail = getattr(err, "stderr", "") or err
            warnings.warn(f"attnvision: could not build the CPU kernels ({detail}); using the reference ops")
            return None
    lib = ctypes.CDLL(str(lib_path))
    i64 = ctypes.c_int64
    for name in KERNELS:
        for suffix in SUFFIX.values():
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes = [ctypes.c_void_p] * 3 + [i64] * 10 + [ctypes.c_int]
            fn.restype = None
    for suffix in SUFFIX.values():
        getattr(lib, f"dot_moments_{suffix}").argtypes = [ctypes.c_void_p] * 3 + [i64] * 9 + [ctypes.c_int]
        getattr(lib, f"dot_moments_bwd_{suffix}").argtypes = [ctypes.c_void_p] * 5 + [i64] * 9 + [ctypes.c_int]
        getattr(lib, f"nbr_attention_fwd_{suffix}").argtypes = [ctypes.c_void_p] * 10 + [i64] * 19 + [ctypes.c_int]
        getattr(lib, f"nbr_attention_bwd_{suffix}").argtypes = [ctypes.c_void_p] * 18 + [i64] * 19 + [ctypes.c_int]
    return lib


@torch.compiler.assume_constant_result  # torch.compile takes the answer, not the build, into its graph
def available() -> bool:
    return _library() is not None


@torch.compiler.assume_constant_result  # (not over lru_cache: torch.compile traces through that wrapper)
def vector_bytes() -> int:
    """The kernels' vector width in bytes (csrc/simd.h: 64 with AVX-512, else 32); the layouts of narrow rows and of a
    block's overhang follow it. 64 where the kernels could not be built (nothing runs on them then)."""
    lib = _library()
    return lib.vector_bytes() if lib is not None else 64


def launch(name: str, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, n: int, d: int, ho: int, wo: int,
           hp: int, wp: int, kh: int, kw: int, stride: int, dilation: int) -> torch.Tensor:
    """Run kernel ``name`` on contiguous CPU tensors of one dtype (float32 or float64), writing into ``out``."""
    fn = getattr(_library(), f"{name}_{SUFFIX[a.dtype]}")
    fn(a.data_ptr(), b.data_ptr(), out.data_ptr(), n, d, ho, wo, hp, wp, kh, kw, stride, dilation,
       torch.get_num_threads())
    return out


def dot_moments(name: str, tensors, hp: int, wp: int, kh: int, kw: int, dilation: int) -> None:
    """``dot_moments`` (q, kp, sums) or ``dot_moments_bwd`` (q, kp, coef, dq, dkp) of ``moments_cpu.c`` on contiguous
    tensors of one dtype, q being N × D × Ho × Wo and kp the padded N × D × hp × wp image."""
    n, d, ho, wo = tensors[0].shape
    fn = getattr(_library(), f"{name}_{SUFFIX[tensors[0].dtype]}")
    fn(*(t.data_ptr() for t in tensors), n, d, ho, wo, hp, wp, kh, kw, dilation, torch.get_num_threads())


def _ptr(t):
    return None if t is None else t.data_ptr()


def attention_forward(q, kp, vp, terms, y, lse, shifts, groups: int, kh: int, kw: int, stride: int, dilation: int,
                      mask: tuple, apart: bool) -> None:
    """Fused local attention forward into ``y`` and ``lse``; ``terms`` = (rel_q, rel_k, rel_v, bias), each a
    contiguous tensor or None; ``shifts``: None, or an int64 tensor of each offset's neighbour position relative to
    the window origin; ``apart``: y holds the sums of v and of rel_v side by side (see ``attention_cpu.c``)."""
    n, d, ho, wo = q.shape
    fn = getattr(_library(), f"nbr_attention_fwd_{SUFFIX[q.dtype]}")
    fn(q.data_ptr(), kp.data_ptr(), vp.data_ptr(), *map(_ptr, terms), y.data_ptr(), lse.data_ptr(), _ptr(shifts),
       n, groups, d, vp.shape[1], ho, wo, kp.shape[-2], kp.shape[-1], kh, kw, stride, dilation, *mask, int(apart),
       torch.get_num_threads())


def attention_backward(q, kp, vp, terms, y, lse, dy, dq, dkp, dvp, dterms, shifts, groups: int, kh: int, kw: int,
                       stride: int, dilation: int, mask: tuple, apart: bool) -> None:
    """Fused local attention backward, accumulating into zeroed dq, dkp, dvp and the per-thread partial sums
    ``dterms`` (one [threads, *term.shape] tensor or None per term)."""
    n, d, ho, wo = q.shape
    fn = getattr(_library(), f"nbr_attention_bwd_{SUFFIX[q.dtype]}")
    fn(q.data_ptr(), kp.data_ptr(), vp.data_ptr(), *map(_ptr, terms), y.data_ptr(), lse.data_ptr(), dy.data_ptr(),
       dq.data_ptr(), dkp.data_ptr(), dvp.data_ptr(), *map(_ptr, dterms), _ptr(shifts), n, groups, d, vp.shape[1],
       ho, wo, kp.shape[-2], kp.shape[-1], kh, kw, stride, dilation, *mask, int(apart), torch.get_num_threads())
