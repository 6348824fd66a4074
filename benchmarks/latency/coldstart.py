"""Cold start in a fresh process: import, load, first image, and peak resident memory.

Run by the harness as `python -m benchmarks.latency.coldstart SYSTEM FOLDER BATCH T_LAUNCH`;
prints one JSON line. Lives in its own process because a warm interpreter hides imports.
"""
from __future__ import annotations

import json
import resource
import sys
import time


def main() -> None:
    system, folder, batch, t_launch = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    t0 = time.time()
    if system == "cmrt":
        import cmrt
    else:
        import diffusers  # noqa: F401
        import torch
    t1 = time.time()
    if system == "cmrt":
        pipe = cmrt.load(folder, device="cpu")
        n = pipe.num_classes

        def call(b):
            labels = None if n is None else [i % n for i in range(b)]
            return pipe(batch_size=b, class_labels=labels, seed=0, output_type="np").images
    else:
        pipe = diffusers.ConsistencyModelPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        n = pipe.unet.config.num_class_embeds

        def call(b):
            labels = None if n is None else [i % n for i in range(b)]
            with torch.inference_mode():
                return pipe(batch_size=b, class_labels=labels, generator=torch.manual_seed(0), output_type="np").images
    t2 = time.time()
    call(1)
    t3 = time.time()
    call(batch)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "interpreter_s": t0 - t_launch,
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        "first_call_s": t3 - t2,
        "process_to_first_image_s": t3 - t_launch,
        "peak_rss_bytes": rss,
        "peak_rss_batch": batch,
    }))


if __name__ == "__main__":
    main()
