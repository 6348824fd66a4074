"""What the non-finite input checks cost: once per call, against the call and one step of it.

Run: .venv/bin/python -m benchmarks.input_checks [ENGINE_DIR] (default engines/digits)
1. `noise.check_standard_normal` (min and max, NaN propagates) against `np.isfinite(x).all()`
   on the digits model's latents [1, 3, 16, 16] and on ImageNet-64's at batch 4 [4, 3, 64, 64];
2. a whole call with caller-given latents (and noise for 2 steps) on the engine at batch 1,
   with the checks and with them replaced by a no-op, alternated call by call; medians.
The checks run once per call (never per step): they are held to the project's host-overhead
target, under 2% of one step.
"""
from __future__ import annotations

import sys
import time

import numpy as np


def median_us(fn, n: int) -> float:
    for _ in range(50):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def main() -> None:
    import cmrt
    from cmrt.runtime import pipeline as pipeline_module
    from cmrt.runtime.noise import check_standard_normal

    rng = np.random.default_rng(0)
    for shape in ((1, 3, 16, 16), (4, 3, 64, 64)):
        x = rng.standard_normal(shape, dtype=np.float32)
        ours = median_us(lambda: check_standard_normal("latents", x), 5000)
        finite = median_us(lambda: np.isfinite(x).all(), 5000)
        print(f"{list(shape)}: check_standard_normal {ours:.1f} us, np.isfinite(x).all() {finite:.1f} us")

    engine = sys.argv[1] if len(sys.argv) > 1 else "engines/digits"
    pipe = cmrt.load(engine, device="cpu")
    shape = (1, *pipe.sample_shape)
    z = rng.standard_normal(shape, dtype=np.float32)
    checked = pipeline_module.check_standard_normal
    for steps in (1, 2):
        noise = [rng.standard_normal(shape, dtype=np.float32) for _ in range(steps)] if steps > 1 else None
        times = {"checked": [], "unchecked": []}
        for i in range(1000):
            for name, fn in (("checked", checked), ("unchecked", lambda name, a: None)):
                pipeline_module.check_standard_normal = fn
                t0 = time.perf_counter()
                pipe(num_inference_steps=steps, latents=z, noise=noise, output_type="np")
                times[name].append(time.perf_counter() - t0)
        pipeline_module.check_standard_normal = checked
        with_check, without = (float(np.median(times[k][50:])) * 1e6 for k in ("checked", "unchecked"))
        check = median_us(lambda: [checked("z", a) for a in [z] + (noise or [])], 5000)
        print(f"{steps} step(s), batch 1: call {with_check:.0f} us with the checks, {without:.0f} us without "
              f"(difference {with_check - without:+.0f} us); the checks alone {check:.1f} us = "
              f"{100 * check / with_check:.2f}% of the call, {100 * check / (with_check / steps):.2f}% of one step")


if __name__ == "__main__":
    main()
