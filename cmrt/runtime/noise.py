"""Where a generation's randomness comes from: numpy, or torch-compatible streams, per batch or per sample.

A noise source draws standard normals and class labels in the order the pipeline asks
(latents, labels, one noise tensor per step). `rng="torch"` reproduces exactly what
diffusers draws from `torch.manual_seed(seed)`, without importing torch, so stored seeds
keep their images. A list of seeds gives every sample its own stream, so a sample does not
depend on what it was batched with (what a server needs).

With a caller's own torch.Generator (or a list of them), diffusers draws the latents and the
step noise from it but the class labels from torch's global generator (`torch.randint`
without `generator=`); cmrt does the same, reading and advancing that global generator
through the torch module the caller has already imported.

Latents and noise a caller passes are checked here too (`check_standard_normal`): NaN or
infinite values, or values no standard normal reaches, would otherwise give black images.
"""
from __future__ import annotations

import abc
import numbers
import sys
from typing import Any, Sequence

import numpy as np

from .torch_rng import TorchCPUGenerator

RNGS = ("numpy", "torch")

# The largest |z| accepted in caller-given latents and noise. A standard normal exceeds 10 with
# probability 1.5e-23, so anything near this bound is not standard normal; it leaves room for
# deliberately scaled inputs (latents already multiplied by sigma_max = 80 are a visible
# mistake, not a crash) and refuses what overflows the float32 UNet (1e30 gives NaN images).
STANDARD_NORMAL_BOUND = 1e4

# torch.manual_seed's range: [-2**63, 2**64) (negative seeds wrap); cmrt takes 0..2**64 - 1.
TORCH_SEED_LIMIT = 2**64

_min, _max = np.minimum.reduce, np.maximum.reduce


def check_standard_normal(name: str, z: np.ndarray) -> None:
    """Refuse NaN, infinities and |z| > STANDARD_NORMAL_BOUND in a numeric array, naming it.

    Two reductions (min and max propagate NaN), no allocation, the ufuncs called directly (the
    methods' wrappers cost more than the work on small arrays); once per call, not per step.
    """
    lo, hi = _min(z, None), _max(z, None)
    if -STANDARD_NORMAL_BOUND <= lo and hi <= STANDARD_NORMAL_BOUND:
        return
    nan, inf = int(np.isnan(z).sum()), int(np.isinf(z).sum())
    if nan or inf:
        what = " and ".join(f"{n} {k}" for n, k in ((nan, "NaN"), (inf, "infinite")) if n)
        raise ValueError(f"{name} holds {what} value(s) out of {z.size}; pass finite standard-normal values")
    raise ValueError(
        f"{name} ranges over [{float(lo):.4g}, {float(hi):.4g}], beyond +-{STANDARD_NORMAL_BOUND:g}: not standard "
        "normal. Pass unscaled N(0, 1) draws (the pipeline multiplies latents by sigma_max itself)"
    )


class NoiseSource(abc.ABC):
    """What every source shares: `normals_into` fills out[i] for each i as successive draws."""

    @abc.abstractmethod
    def normal_into(self, out: np.ndarray) -> np.ndarray:
        """Standard normals of `out`'s shape, written into it."""

    def normals_into(self, out: np.ndarray) -> np.ndarray:
        for z in out:  # one big draw would differ for torch's kernels and per-sample streams
            self.normal_into(z)
        return out


class NumpyNoise(NoiseSource):
    def __init__(self, gen: np.random.Generator):
        self.gen = gen

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.gen.standard_normal(shape, dtype=np.float32)

    def normal_into(self, out: np.ndarray) -> np.ndarray:
        """The same draw as `normal(out.shape)`, written into `out` (the sampling loop allocates nothing)."""
        return self.gen.standard_normal(dtype=np.float32, out=out)

    def normals_into(self, out: np.ndarray) -> np.ndarray:
        """out[i] for each i as successive draws; numpy fills in order, so one draw gives the same values."""
        return self.normal_into(out)

    def labels(self, num_classes: int, n: int) -> np.ndarray:
        return self.gen.integers(0, num_classes, size=n).astype(np.int64)

    def finish(self) -> None:
        pass


class TorchNoise(NoiseSource):
    """torch's CPU generator semantics; `owner` is a real torch.Generator to advance afterwards."""

    def __init__(self, gen: TorchCPUGenerator, owner: Any = None):
        self.gen = gen
        self.owner = owner

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.gen.randn(*shape, dtype=np.float32)

    def normal_into(self, out: np.ndarray) -> np.ndarray:
        out[...] = self.normal(out.shape)
        return out


    def labels(self, num_classes: int, n: int) -> np.ndarray:
        return self.gen.randint(0, num_classes, size=(n,)).astype(np.int64)

    def finish(self) -> None:
        # Leave the caller's torch.Generator where diffusers would have left it. Its state
        # tensor is written through numpy, so torch is still never imported here.
        if self.owner is not None:
            state = self.owner.get_state()
            state.numpy()[:] = self.gen.get_state()
            self.owner.set_state(state)


class PerSampleNoise(NoiseSource):
    """One stream per sample: row i of every draw comes from stream i alone (a stream listed
    twice, the same generator object, is drawn from in turn, as diffusers does)."""

    def __init__(self, sources: Sequence[Any]):
        self.sources = list(sources)

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        if shape[0] != len(self.sources):
            raise ValueError(f"{len(self.sources)} seeds or generators for a batch of {shape[0]}")
        return np.concatenate([s.normal((1, *shape[1:])) for s in self.sources])

    def normal_into(self, out: np.ndarray) -> np.ndarray:
        if out.shape[0] != len(self.sources):
            raise ValueError(f"{len(self.sources)} seeds or generators for a batch of {out.shape[0]}")
        for i, s in enumerate(self.sources):
            s.normal_into(out[i : i + 1])
        return out

    def labels(self, num_classes: int, n: int) -> np.ndarray:
        return np.concatenate([s.labels(num_classes, 1) for s in self.sources])

    def finish(self) -> None:
        for s in {id(s): s for s in self.sources}.values():
            s.finish()


class TorchGlobalLabels(NoiseSource):
    """`inner`'s draws, but class labels from torch's global generator in one draw of the batch:
    diffusers' `torch.randint(0, n, size=(B,))` when the caller passes torch.Generator(s).

    The global generator is read when the labels are drawn (nothing touches it before) and
    written back by `finish`; `shared` maps id(torch generator) -> its TorchNoise, so a global
    generator that is also the caller's (`torch.manual_seed(s)` returns it) stays one stream.
    """

    def __init__(self, inner: NoiseSource, torch_module: Any, shared: dict[int, TorchNoise]):
        self.inner = inner
        self.torch = torch_module
        self.shared = shared
        self.global_noise: TorchNoise | None = None

    def normal(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.inner.normal(shape)

    def normal_into(self, out: np.ndarray) -> np.ndarray:
        return self.inner.normal_into(out)

    def normals_into(self, out: np.ndarray) -> np.ndarray:
        return self.inner.normals_into(out)

    def labels(self, num_classes: int, n: int) -> np.ndarray:
        if self.global_noise is None:
            gen = self.torch.default_generator
            self.global_noise = self.shared.get(id(gen)) or TorchNoise(TorchCPUGenerator.from_torch(gen), owner=gen)
        return self.global_noise.labels(num_classes, n)

    def finish(self) -> None:
        self.inner.finish()
        if self.global_noise is not None and id(self.global_noise.owner) not in self.shared:
            self.global_noise.finish()


def _is_torch_generator(obj: Any) -> bool:
    t = type(obj)
    return t.__module__.startswith("torch") and t.__name__ == "Generator"


def _check_seed(seed: Any, rng: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer (or a list of integers, one per sample), got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if rng == "torch" and seed >= TORCH_SEED_LIMIT:
        raise ValueError(f"seed for rng='torch' must be below 2**64 (what torch.manual_seed accepts), got {seed}")
    return int(seed)


def _from_seed(seed: int, rng: str):
    return NumpyNoise(np.random.default_rng(seed)) if rng == "numpy" else TorchNoise(TorchCPUGenerator(seed))


def _from_generator(gen: Any, rng: str, shared: dict[int, TorchNoise]):
    """The source for one generator; torch generators are recorded in `shared` by id, so one
    generator object passed twice (or also torch's global one) is one stream."""
    if isinstance(gen, np.random.Generator):
        if rng == "torch":
            raise TypeError("rng='torch' needs a torch.Generator or cmrt TorchCPUGenerator, got a numpy Generator")
        return NumpyNoise(gen)
    if isinstance(gen, TorchCPUGenerator):
        return TorchNoise(gen)
    if _is_torch_generator(gen):
        if str(gen.device) != "cpu":
            raise ValueError(f"only CPU torch generators can be continued, got one on {gen.device}")
        if id(gen) not in shared:
            shared[id(gen)] = TorchNoise(TorchCPUGenerator.from_torch(gen), owner=gen)
        return shared[id(gen)]
    raise TypeError(
        "generator must be a numpy.random.Generator, a torch.Generator (CPU) or a cmrt TorchCPUGenerator, "
        f"got {type(gen).__name__}"
    )


def _diffusers_labels(source: NoiseSource, generators: list, shared: dict[int, TorchNoise]) -> NoiseSource:
    """`source`, with labels from torch's global generator when every generator is a torch.Generator
    (torch is then imported: the caller made them). Where the caller's generator is the global one
    (`torch.manual_seed(s)` returns it), labels and noise stay one stream, as in diffusers."""
    torch = sys.modules.get("torch")
    if torch is None or not shared or len(shared) != len({id(g) for g in generators}):
        return source  # a numpy or cmrt generator among them: labels from the source, as documented
    return TorchGlobalLabels(source, torch, shared)


def make_noise_source(seed: Any, generator: Any, rng: str, batch_size: int):
    """The noise source for one call; validates `seed`/`generator`/`rng` with messages naming them."""
    if rng not in RNGS:
        raise ValueError(f"rng must be one of {RNGS}, got {rng!r}")
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if isinstance(seed, (list, tuple, np.ndarray)) or isinstance(generator, (list, tuple)):
        items = list(seed) if seed is not None else list(generator)
        if len(items) != batch_size:
            what = "seed" if seed is not None else "generator"
            raise ValueError(f"{what} has {len(items)} entries for batch_size {batch_size}; pass one per sample")
        if seed is not None:
            return PerSampleNoise([_from_seed(_check_seed(s, rng), rng) for s in items])
        shared: dict[int, TorchNoise] = {}
        return _diffusers_labels(PerSampleNoise([_from_generator(g, rng, shared) for g in items]), items, shared)
    if generator is not None:
        shared = {}
        return _diffusers_labels(_from_generator(generator, rng, shared), [generator], shared)  # torch semantics
    if seed is not None:
        return _from_seed(_check_seed(seed, rng), rng)
    entropy = int(np.random.SeedSequence().entropy % (2**63))
    return _from_seed(entropy, rng)
