"""Numpy re-implementation of torch's CPU random generator (the parts diffusers uses).

Why this exists
---------------
``diffusers.ConsistencyModelPipeline`` draws its initial latents with
``torch.randn(shape, generator=g, dtype=...)`` on a CPU ``torch.Generator`` (and, for
class-conditional checkpoints without explicit labels, ``torch.randint(0, n, (B,))``
on torch's *global* CPU generator).  The cmrt runtime must never import torch, but a
stored seed must still give the same image as diffusers.  This module reproduces,
in numpy only, exactly the torch code paths involved:

* ``at::mt19937`` (``aten/src/ATen/core/MT19937RNGEngine.h``): standard MT19937,
  seeded with ``init_genrand(seed & 0xffffffff)``; the full 64-bit seed is kept only
  as ``initial_seed``.  State is ``(state[624], left, next)``; ``left == 1`` means
  "twist on the next draw".  ``random64()`` = ``(first32 << 32) | second32``
  (``CPUGeneratorImpl.cpp``).  Bulk streams come from ``numpy.random.MT19937``
  (same twist/tempering; ``random_raw`` yields the 32-bit outputs) loaded with our key.
* ``torch.randn`` float32/float16, ``numel >= 16`` (contiguous): ``normal_fill`` in
  ``aten/src/ATen/native/cpu/DistributionTemplates.h``: uniforms
  ``(random() & 0xffffff) * 2**-24``; Box-Muller on blocks of 16 (element ``j`` with
  ``j + 8``; ``u1 = 1 - u[j]``, ``u2 = u[j+8]``; ``out[j] = r*cos``,
  ``out[j+8] = r*sin``); if ``numel % 16`` the last 16 outputs are recomputed from
  16 *fresh* uniforms.  float32 first draws all ``numel`` uniforms and then 16 more;
  float16 only draws ``16*(numel//16) + 16`` (per-block buffer).
  ``normal_stub`` has two kernels on x86 (``DistributionKernels.cpp``):
    - ``kernel="avx2"``: ``NormalFill16<float>`` AVX2 specialisation using
      ``log256_ps``/``sincos256_ps`` from ``avx_mathfun.h`` (Cephes polynomials in
      float32).  This is what runs on every AVX2 *and* AVX512 machine, because
      ``normal_stub`` is registered with ``REGISTER_NO_AVX512_DISPATCH`` and falls back to
      the AVX2 kernel.  We emulate it instruction by instruction, including the FMA
      contractions GCC emitted (read from the disassembly of libtorch_cpu.so 2.13.0:
      the polynomial steps and the Cody-Waite reduction are fused, the rest is not);
      float32 FMAs are emulated exactly (double product + TwoSum tie fix-up).
      Result: bit-identical to torch in all measured cases.
    - ``kernel="scalar"``: the generic template (``ATEN_CPU_CAPABILITY=default``, non-x86
      builds): glibc ``logf``/``sincosf``/``fmaf``.  We compute those in float64 and round
      to float32, so a small fraction of values (glibc's float functions are not
      correctly rounded) differ in the last bit (<= 1 float32 ulp, |diff| <= ~5e-7).
* ``numel < 16`` (any dtype) and float64 outputs: ``at::normal_distribution<double>``:
  ``u1, u2`` are 53-bit doubles from ``random64()``, ``r = sqrt(-2*log1p(-u2))``,
  ``theta = 2*pi*u1``, returns ``r*cos(theta)`` and caches ``r*sin(theta)`` in the
  generator (``next_double_normal_sample``), which the *next* small draw consumes, even
  in a later ``randn`` call.  Computed with Python's ``math`` (the platform libm, the same
  functions torch calls), so bit-identical on glibc.
* ``torch.randint(low, high, size)``: ``uniform_int_from_to_distribution``:
  ``range = high - low``; ``range >= 2**28`` uses ``random64() % range``, otherwise
  ``random() % range`` (the 2**28 threshold, not 2**32, is the non-fbcode build).
* ``get_state``/``set_state``: the 5056-byte ``CPUGeneratorImplState`` of
  ``CPUGeneratorImpl.cpp`` (legacy pod with 64-bit state words, ``normal_y`` /
  ``normal_is_valid`` for the double cache, then the float cache), byte-identical to
  ``torch.Generator.get_state()``.

Limits (documented, checked)
----------------------------
* Verified against torch 2.13.0+cpu (x86_64, glibc 2.36, AVX512 CPU; kernels forced
  with ``ATEN_CPU_CAPABILITY=avx2|avx512|default``).  The AVX2 emulation follows the
  instruction sequence compiled into that wheel; another torch build/compiler could fuse
  differently (last-bit differences, still <= ~1e-6).
* ``kernel="scalar"`` is last-bit exact only where libm's float ``logf``/``sincosf``
  round the same way as float64-then-round (most values; see benchmarks).
  macOS / ppc64le (VSX, Sleef) / aarch64 builds are not verified.
* float64 ``randn`` with ``numel >= 16`` uses numpy's float64 log/sin/cos, which may
  differ from glibc in the last double bit.
* Only contiguous outputs and ``mean=0, std=1`` randn are exercised by diffusers;
  ``normal()`` with other mean/std is provided and follows the same formulas.
"""
from __future__ import annotations

import math
import os
import platform
import struct
from typing import Iterable, Optional, Sequence, Union

import numpy as np

__all__ = ["TorchCPUGenerator", "default_normal_kernel", "STATE_SIZE", "DEFAULT_SEED"]

N = 624
STATE_SIZE = 5056  # sizeof(at::detail::CPUGeneratorImplState)
DEFAULT_SEED = 67280421310721  # c10::detail::default_rng_seed_val (torch.Generator())

_F32 = np.float32
_U32 = np.uint32

# ---------------------------------------------------------------- state layout
# struct CPUGeneratorImplStateLegacy {
#   uint64 the_initial_seed; int left; int seeded; uint64 next; uint64 state[624];
#   double normal_x, normal_y, normal_rho; int normal_is_valid; (4 pad) }
# struct CPUGeneratorImplState { legacy; float next_float_normal_sample; bool valid; (3 pad) }
_OFF_SEED, _OFF_LEFT, _OFF_SEEDED, _OFF_NEXT, _OFF_STATE = 0, 8, 12, 16, 24
_OFF_NX = _OFF_STATE + 8 * N  # 5016
_OFF_NY, _OFF_NRHO, _OFF_NVALID = _OFF_NX + 8, _OFF_NX + 16, _OFF_NX + 24
_OFF_FLOAT, _OFF_FVALID = 5048, 5052


def default_normal_kernel() -> str:
    """Which ``normal_stub`` kernel torch would run on this machine: 'avx2' or 'scalar'.

    torch picks AVX2 when the CPU has AVX2+FMA (AVX512 CPUs also use the AVX2 normal
    kernel); ``ATEN_CPU_CAPABILITY=default`` forces the scalar kernel.
    """
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if cap == "default":
        return "scalar"
    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i686"):
        return "scalar"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "avx2" if {"avx2", "fma"} <= flags else "scalar"
    except OSError:
        pass
    return "avx2"  # x86_64 without /proc/cpuinfo (e.g. macOS): assume a post-2013 CPU


# ---------------------------------------------------------------- mt19937 helpers
def _init_genrand(seed32: int) -> np.ndarray:
    key = [0] * N
    key[0] = seed32
    for j in range(1, N):
        prev = key[j - 1]
        key[j] = (1812433253 * (prev ^ (prev >> 30)) + j) & 0xFFFFFFFF
    return np.array(key, dtype=_U32)


def _temper(y: np.ndarray) -> np.ndarray:
    y = y.astype(_U32, copy=True)
    y ^= y >> _U32(11)
    y ^= (y << _U32(7)) & _U32(0x9D2C5680)
    y ^= (y << _U32(15)) & _U32(0xEFC60000)
    y ^= y >> _U32(18)
    return y


# ---------------------------------------------------------------- float32 helpers
def _bits(x: np.ndarray) -> np.ndarray:
    return x.view(np.int32)


def _fbits(i: np.ndarray) -> np.ndarray:
    return i.astype(np.int32, copy=False).view(_F32)


def _fma32(a, b, c) -> np.ndarray:
    """Correctly rounded float32 fma(a, b, c) (like vfmadd*ps), emulated in float64.

    a*b is exact in double (24+24 bits).  s = p + c may round; TwoSum gives the exact
    error e, and the only way double rounding can go wrong is when s lies exactly on a
    float32 rounding midpoint with e != 0: then nudge s one double-ulp towards e.
    """
    p = np.multiply(a, b, dtype=np.float64)
    c64 = np.asarray(c, dtype=np.float64)
    s = p + c64
    bv = s - p
    e = (p - (s - bv)) + (c64 - bv)
    low = s.view(np.uint64) & np.uint64((1 << 29) - 1)
    tie = (low == np.uint64(1 << 28)) & (e != 0)
    if tie.any():
        s = np.where(tie, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)
    return s.astype(_F32)


def _c(v) -> np.float32:
    return _F32(v)


# constants of avx_mathfun.h, as the compiler materialised them (float of the literal)
_ONE = _c(1.0)
_HALF = _c(0.5)
_MIN_NORM = np.array([0x00800000], np.int32).view(_F32)[0]
_INV_MANT_MASK = np.int32(~0x7F800000)
_SIGN_MASK = np.int32(-0x80000000)
_INV_SIGN_MASK = np.int32(0x7FFFFFFF)
_SQRTHF = _c(0.707106781186547524)
_LOG_P = [_c(v) for v in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                          1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                          3.3333331174e-1)]
_LOG_Q1 = _c(-2.12194440e-4)
_LOG_Q2 = _c(0.693359375)
_DP1, _DP2, _DP3 = _c(-0.78515625), _c(-2.4187564849853515625e-4), _c(-3.77489497744594108e-8)
_SIN_P = [_c(-1.9515295891e-4), _c(8.3321608736e-3), _c(-1.6666654611e-1)]
_COS_P = [_c(2.443315711809948e-005), _c(-1.388731625493765e-003), _c(4.166664568298827e-002)]
_FOPI = _c(1.27323954473516)
_TWO_PI_F = _c(2.0 * math.pi)
_MINUS_TWO = _c(-2.0)


def _log256_ps(x: np.ndarray) -> np.ndarray:
    """log256_ps of avx_mathfun.h, as compiled in libtorch_cpu (AVX2+FMA)."""
    invalid = x <= 0
    x = np.maximum(x, _MIN_NORM)
    xi = _bits(x)
    imm0 = (xi.view(np.uint32) >> _U32(23)).view(np.int32) - np.int32(0x7F)
    x = _fbits((xi & _INV_MANT_MASK) | np.int32(0x3F000000))  # | 0.5f
    e = imm0.astype(_F32) + _ONE
    mask = x < _SQRTHF
    tmp = np.where(mask, x, _F32(0))
    x = x - _ONE
    e = e - np.where(mask, _ONE, _F32(0))
    x = x + tmp
    z = x * x
    y = _fma32(_LOG_P[0], x, _LOG_P[1])
    for p in _LOG_P[2:]:
        y = _fma32(y, x, p)
    y = y * x
    y = _fma32(y, z, e * _LOG_Q1)
    y = y - z * _HALF  # vfnmadd(z, 0.5, y): z*0.5 is exact, so one rounding either way
    x = x + y
    x = _fma32(e, _LOG_Q2, x)
    if invalid.any():
        x = np.where(invalid, _F32(np.nan), x)
    return x


def _sincos256_ps(x: np.ndarray):
    """sincos256_ps of avx_mathfun.h, as compiled in libtorch_cpu (AVX2+FMA)."""
    xi = _bits(x)
    sign_sin = xi & _SIGN_MASK
    ax = _fbits(xi & _INV_SIGN_MASK)
    y = ax * _FOPI
    j = y.astype(np.int32) + np.int32(1)  # cvttps2dq truncates
    jj = j & np.int32(~1)
    yf = jj.astype(_F32)
    sign_sin = sign_sin ^ ((j & np.int32(4)) << np.int32(29))
    poly_mask = (j & np.int32(2)) == 0
    xr = _fma32(yf, _DP1, ax)
    xr = _fma32(_DP2, yf, xr)
    xr = _fma32(yf, _DP3, xr)
    sign_cos = (~(jj - np.int32(2)) & np.int32(4)) << np.int32(29)
    z = xr * xr
    tmp = z * _HALF
    yc = _fma32(_COS_P[0], z, _COS_P[1])
    yc = _fma32(yc, z, _COS_P[2])
    yc = _fma32(z, z * yc, -tmp)  # vfmsub231ps
    yc = yc + _ONE
    ys = _fma32(_SIN_P[0], z, _SIN_P[1])
    ys = _fma32(ys, z, _SIN_P[2])
    ys = _fma32(xr, z * ys, xr)
    zero = _F32(0)
    ysin2 = np.where(poly_mask, ys, zero)
    ysin1 = np.where(poly_mask, zero, yc)
    yc2 = yc - ysin1
    ys2 = ys - ysin2
    s = ysin2 + ysin1
    c = ys2 + yc2
    return _fbits(_bits(s) ^ sign_sin), _fbits(_bits(c) ^ sign_cos)


def _box_muller16_avx2(blocks: np.ndarray, mean: float, std: float) -> np.ndarray:
    """NormalFill16<float, true> (AVX2) applied to rows of 16 float32 uniforms."""
    u1 = _ONE - blocks[:, :8]
    u2 = blocks[:, 8:]
    radius = np.sqrt(_MINUS_TWO * _log256_ps(u1))
    theta = _TWO_PI_F * u2
    s, c = _sincos256_ps(theta)
    out = np.empty_like(blocks)
    out[:, :8] = _fma32(radius * c, _F32(std), _F32(mean))
    out[:, 8:] = _fma32(radius * s, _F32(std), _F32(mean))
    return out


def _box_muller16_scalar(blocks: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Generic NormalFill16<float>: logf, sincosf(float(2*pi*(double)u2)), fmaf."""
    u1 = _ONE - blocks[:, :8]
    u2 = blocks[:, 8:]
    logf = np.log(u1.astype(np.float64)).astype(_F32)
    radius = np.sqrt(_MINUS_TWO * logf)
    theta = ((2.0 * math.pi) * u2.astype(np.float64)).astype(_F32).astype(np.float64)
    c = np.cos(theta).astype(_F32)
    s = np.sin(theta).astype(_F32)
    out = np.empty_like(blocks)
    out[:, :8] = _fma32(radius * c, _F32(std), _F32(mean))
    out[:, 8:] = _fma32(radius * s, _F32(std), _F32(mean))
    return out


def _box_muller16_double(blocks: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Generic NormalFill16<double> (float64 output), numpy libm (last-bit caveat)."""
    u1 = 1.0 - blocks[:, :8]
    u2 = blocks[:, 8:]
    radius = np.sqrt(-2.0 * np.log(u1))
    theta = (2.0 * math.pi) * u2
    out = np.empty_like(blocks)
    out[:, :8] = radius * np.cos(theta) * std + mean
    out[:, 8:] = radius * np.sin(theta) * std + mean
    return out


_CHUNK_BLOCKS = 1 << 14  # rows of 16 processed at once (keeps temporaries in cache)

ShapeLike = Union[int, Sequence[int]]


def _shape(size: Iterable[int] | int) -> tuple:
    if isinstance(size, (int, np.integer)):
        return (int(size),)
    return tuple(int(s) for s in size)


class TorchCPUGenerator:
    """A numpy twin of ``torch.Generator(device="cpu")``.

    ``TorchCPUGenerator(seed)`` behaves like ``torch.Generator().manual_seed(seed)``;
    ``randn`` / ``randint`` consume the stream exactly like the torch calls, so
    interleaved calls stay in sync.  ``kernel`` selects torch's normal kernel:
    'avx2' (x86 with AVX2/AVX512), 'scalar' (ATEN_CPU_CAPABILITY=default, non-x86);
    'auto' picks what torch would pick on this machine.
    """

    def __init__(self, seed: Optional[int] = None, *, kernel: str = "auto"):
        if kernel == "auto":
            kernel = default_normal_kernel()
        if kernel not in ("avx2", "scalar"):
            raise ValueError(f"kernel must be 'auto', 'avx2' or 'scalar', not {kernel!r}")
        self.kernel = kernel
        self._bg = np.random.MT19937(0)
        self.manual_seed(DEFAULT_SEED if seed is None else seed)

    # ------------------------------------------------------------ seeding / state
    def manual_seed(self, seed: int) -> "TorchCPUGenerator":
        seed = int(seed)
        if not -(1 << 63) <= seed < (1 << 64):  # torch's range; torch raises ValueError outside it too
            raise ValueError(f"seed must be in [-2**63, 2**64) like torch.manual_seed's, got {seed}")
        seed &= (1 << 64) - 1
        self._seed = seed
        self._key = _init_genrand(seed & 0xFFFFFFFF)
        self._left = 1
        self._next = 0
        self._next_double: Optional[float] = None
        self._next_float: Optional[float] = None
        return self

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self) -> np.ndarray:
        """The 5056-byte state, as ``torch.Generator.get_state().numpy()`` returns it."""
        buf = bytearray(STATE_SIZE)
        struct.pack_into("<QiiQ", buf, 0, self._seed, self._left, 1, self._next)
        buf[_OFF_STATE:_OFF_NX] = self._key.astype("<u8").tobytes()
        if self._next_double is not None:
            struct.pack_into("<d", buf, _OFF_NY, self._next_double)
            struct.pack_into("<i", buf, _OFF_NVALID, 1)
        if self._next_float is not None:
            struct.pack_into("<f", buf, _OFF_FLOAT, self._next_float)
            buf[_OFF_FVALID] = 1
        return np.frombuffer(bytes(buf), dtype=np.uint8).copy()

    def set_state(self, state) -> "TorchCPUGenerator":
        """Load a state from ``get_state()`` (bytes, bytearray, memoryview or uint8 array)."""
        if hasattr(state, "numpy") and not isinstance(state, np.ndarray):
            state = state.numpy()  # a torch uint8 tensor passed directly
        raw = bytes(np.ascontiguousarray(np.asarray(state, dtype=np.uint8)).tobytes()
                    if not isinstance(state, (bytes, bytearray, memoryview)) else state)
        if len(raw) != STATE_SIZE:
            raise ValueError(f"expected a CPUGeneratorImplState of {STATE_SIZE} bytes, got {len(raw)}")
        seed, left, seeded, nxt = struct.unpack_from("<QiiQ", raw, 0)
        nxt &= 0xFFFFFFFF  # static_cast<uint32_t>
        if not (seeded and 0 < left <= N and nxt <= N):
            raise ValueError("Invalid mt19937 state")
        key = np.frombuffer(raw, dtype="<u8", count=N, offset=_OFF_STATE).astype(_U32)
        (ny,) = struct.unpack_from("<d", raw, _OFF_NY)
        (nvalid,) = struct.unpack_from("<i", raw, _OFF_NVALID)
        (nf,) = struct.unpack_from("<f", raw, _OFF_FLOAT)
        self._seed, self._left, self._next, self._key = seed, left, nxt, key
        self._next_double = ny if nvalid else None
        self._next_float = nf if raw[_OFF_FVALID] else None
        return self

    @classmethod
    def from_torch(cls, gen, *, kernel: str = "auto") -> "TorchCPUGenerator":
        """Continue a ``torch.Generator`` (CPU) from its current state (torch not imported)."""
        g = cls(0, kernel=kernel)
        return g.set_state(gen.get_state().numpy())

    def clone(self) -> "TorchCPUGenerator":
        g = TorchCPUGenerator(0, kernel=self.kernel)
        return g.set_state(self.get_state())

    # ------------------------------------------------------------ raw streams
    def random_u32(self, n: int) -> np.ndarray:
        """The next ``n`` outputs of ``CPUGeneratorImpl::random()`` (uint32)."""
        out = np.empty(n, dtype=_U32)
        if n <= 0:
            return out
        filled = 0
        avail = self._left - 1  # draws served from the current key before the next twist
        if avail > 0:
            k = min(avail, n)
            if self._next + k > N:
                raise ValueError("inconsistent mt19937 state (next + left - 1 > 624)")
            out[:k] = _temper(self._key[self._next:self._next + k])
            self._next += k
            self._left -= k
            filled = k
        if filled < n:
            self._bg.state = {"bit_generator": "MT19937", "state": {"key": self._key, "pos": N}}
            out[filled:] = self._bg.random_raw(n - filled)
            st = self._bg.state["state"]
            self._key = np.asarray(st["key"], dtype=_U32).copy()
            pos = int(st["pos"])
            self._next, self._left = pos, N + 1 - pos
        return out

    def random_u64(self, n: int) -> np.ndarray:
        """The next ``n`` outputs of ``CPUGeneratorImpl::random64()`` (uint64)."""
        r = self.random_u32(2 * n).astype(np.uint64).reshape(n, 2)
        return (r[:, 0] << np.uint64(32)) | r[:, 1]

    def _uniform24(self, n: int) -> np.ndarray:
        # uniform_real_distribution<float>(0, 1): (random() & 0xffffff) * 2^-24
        return ((self.random_u32(n) & _U32(0xFFFFFF)).astype(_F32) * _F32(2.0 ** -24))

    def _uniform53(self, n: int) -> np.ndarray:
        # uniform_real_distribution<double>(0, 1): (random64() & (2^53-1)) * 2^-53
        m = self.random_u64(n) & np.uint64((1 << 53) - 1)
        return m.astype(np.float64) * (2.0 ** -53)

    # ------------------------------------------------------------ distributions
    def _normal_double(self, mean: float, std: float) -> float:
        """at::normal_distribution<double> with the generator's cached second sample."""
        if self._next_double is not None:
            ret = self._next_double
            self._next_double = None
            return ret * std + mean
        u1, u2 = self._uniform53(2)
        u1, u2 = float(u1), float(u2)
        r = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._next_double = r * math.sin(theta)
        return r * math.cos(theta) * std + mean

    def _fill16(self, blocks: np.ndarray, mean: float, std: float) -> np.ndarray:
        if blocks.dtype == np.float64:
            fn = _box_muller16_double
        elif self.kernel == "avx2":
            fn = _box_muller16_avx2
        else:
            fn = _box_muller16_scalar
        if blocks.shape[0] <= _CHUNK_BLOCKS:
            return fn(blocks, mean, std)
        out = np.empty_like(blocks)
        for i in range(0, blocks.shape[0], _CHUNK_BLOCKS):
            out[i:i + _CHUNK_BLOCKS] = fn(blocks[i:i + _CHUNK_BLOCKS], mean, std)
        return out

    def normal(self, size: ShapeLike, mean: float = 0.0, std: float = 1.0,
               dtype=np.float32) -> np.ndarray:
        """``torch.empty(size, dtype).normal_(mean, std, generator=g)`` on CPU."""
        shape = _shape(size)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64)):
            raise TypeError(f"unsupported dtype {dtype} (float32, float16, float64)")
        if std < 0:
            raise ValueError("std must be non-negative")
        if n < 16:  # serial normal_distribution<double>, cast to the output dtype
            vals = [self._normal_double(float(mean), float(std)) for _ in range(n)]
            return np.array(vals, dtype=np.float64).astype(dtype).reshape(shape)
        nb = n // 16
        if dtype == np.float16:
            # opmath buffer of 16: only full blocks' uniforms are drawn before the tail
            u = self._uniform24(16 * nb).reshape(nb, 16)
            out = self._fill16(u, mean, std).reshape(-1).astype(np.float16)
            if n % 16:
                tail = self._fill16(self._uniform24(16).reshape(1, 16), mean, std)
                out = np.concatenate([out[: n - 16], tail.reshape(-1).astype(np.float16)])
            return out.reshape(shape)
        uni = self._uniform53 if dtype == np.float64 else self._uniform24
        data = uni(n)
        data[: 16 * nb] = self._fill16(data[: 16 * nb].reshape(nb, 16), mean, std).reshape(-1)
        if n % 16:
            data[n - 16:] = self._fill16(uni(16).reshape(1, 16), mean, std).reshape(-1)
        return data.reshape(shape)

    def randn(self, *size, dtype=np.float32) -> np.ndarray:
        """``torch.randn(size, generator=g, dtype=dtype)`` on CPU (float32 by default)."""
        if len(size) == 1 and not isinstance(size[0], (int, np.integer)):
            size = tuple(size[0])
        return self.normal(size, 0.0, 1.0, dtype=dtype)

    def randint(self, low: int, high: Optional[int] = None, size: ShapeLike = (),
                dtype=np.int64) -> np.ndarray:
        """``torch.randint(low, high, size, generator=g)`` on CPU (int64 by default).

        ``randint(high, size=...)`` means ``low = 0`` as in torch.
        """
        if high is None:
            low, high = 0, low
        low, high = int(low), int(high)
        if high <= low:
            raise ValueError(f"random_ expects 'from' to be less than 'to', but got from={low} >= to={high}")
        shape = _shape(size)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        rng = high - low
        if rng >= (1 << 28):
            v = self.random_u64(n) % np.uint64(rng)
        else:
            v = (self.random_u32(n) % _U32(rng)).astype(np.uint64)
        # static_cast<int64_t>((val % range) + base)
        # (two's-complement wrap-around, done in uint64)
        res = (v + np.uint64(low & ((1 << 64) - 1))).view(np.int64)
        return res.astype(dtype).reshape(shape)
