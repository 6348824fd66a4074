"""Where a generation's randomness comes from: numpy, or torch-compatible streams, per batch or per sample.

A noise source draws standard normals and class labels in the order the pipeline asks
(latents, labels, one noise tensor per step). `rng="torch"` reproduces exactly what
diffusers draws from `torch.manual_seed(seed)`, without importing torch, so stored seeds
keep their images. A list of seeds gives every sample its own stream, so a sample does not
depend on what it was batched with (what a server needs).
"""
from __future__ import annotations

import abc
import numbers
from typing import Any, Sequence

import numpy as np

from .torch_rng import TorchCPUGenerator

RNGS = ("numpy", "torch")


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
    """One stream per sample: row i of every draw comes from stream i alone."""

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
        for s in self.sources:
            s.finish()


def _is_torch_generator(obj: Any) -> bool:
    t = type(obj)
    return t.__module__.startswith("torch") and t.__name__ == "Generator"


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer (or a list of integers, one per sample), got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed)


def _from_seed(seed: int, rng: str):
    return NumpyNoise(np.random.default_rng(seed)) if rng == "numpy" else TorchNoise(TorchCPUGenerator(seed))


def _from_generator(gen: Any, rng: str):
    if isinstance(gen, np.random.Generator):
        if rng == "torch":
            raise TypeError("rng='torch' needs a torch.Generator or cmrt TorchCPUGenerator, got a numpy Generator")
        return NumpyNoise(gen)
    if isinstance(gen, TorchCPUGenerator):
        return TorchNoise(gen)
    if _is_torch_generator(gen):
        if str(gen.device) != "cpu":
            raise ValueError(f"only CPU torch generators can be continued, got one on {gen.device}")
        return TorchNoise(TorchCPUGenerator.from_torch(gen), owner=gen)
    raise TypeError(
        "generator must be a numpy.random.Generator, a torch.Generator (CPU) or a cmrt TorchCPUGenerator, "
        f"got {type(gen).__name__}"
    )


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
            return PerSampleNoise([_from_seed(_check_seed(s), rng) for s in items])
        return PerSampleNoise([_from_generator(g, rng) for g in items])
    if generator is not None:
        return _from_generator(generator, rng)  # a torch generator implies torch semantics
    if seed is not None:
        return _from_seed(_check_seed(seed), rng)
    entropy = int(np.random.SeedSequence().entropy % (2**63))
    return _from_seed(entropy, rng)
