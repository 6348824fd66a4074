"""Max abs image difference, cmrt (ONNX Runtime CPU) vs diffusers, over the parity-test matrix.

Run: .venv/bin/python -m benchmarks.parity_diffusers
Same latents and step noise for both (torch's generator, in diffusers' draw order).
"""
from __future__ import annotations

import logging
import pathlib
import tempfile

import numpy as np


def main() -> None:
    import diffusers
    import torch

    import cmrt
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions
    from tests.models import save_small_model

    logging.basicConfig(level=logging.WARNING)
    diffusers.utils.logging.disable_progress_bar()
    errors = {}
    root = pathlib.Path(tempfile.mkdtemp())
    for cond in (True, False):
        for shift in ("scale_shift", "default"):
            f = save_small_model(root / f"{cond}{shift}", cond, shift)
            e = build_engine_folder(str(f), out=root / f"e{cond}{shift}", options=BuildOptions(precisions=("fp32",)))
            ref = diffusers.ConsistencyModelPipeline.from_pretrained(f)
            ref.set_progress_bar_config(disable=True)
            pipe = cmrt.load(e)
            for sched in ({"num_inference_steps": 1}, {"timesteps": [22, 0]}, {"num_inference_steps": 3}):
                n = sched.get("num_inference_steps") or len(sched["timesteps"])
                for b in (1, 3):
                    g = torch.Generator().manual_seed(7)
                    lat = torch.randn(b, 3, 16, 16, generator=g)
                    noise = [torch.randn(b, 3, 16, 16, generator=g).numpy() for _ in range(n)] if n > 1 else None
                    labels = [1, 2, 3][:b] if cond else None
                    r = ref(batch_size=b, class_labels=labels, generator=torch.Generator().manual_seed(7),
                            output_type="np", **sched).images
                    o = pipe(batch_size=b, class_labels=labels, latents=lat.numpy(), noise=noise, output_type="np",
                             **sched).images
                    errors[(cond, shift, str(sched), b)] = float(np.abs(o - r).max())
    v = np.array(list(errors.values()))
    print(f"{len(v)} settings (cond/uncond x scale_shift/default x 1, [22,0], 3 steps x batch 1, 3): "
          f"max abs error {v.max():.2e}, median {np.median(v):.2e}")


if __name__ == "__main__":
    main()
