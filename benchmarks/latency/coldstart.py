"""Cold start in a fresh process: import, load, first image, and peak resident memory.

Run by the harness as `python -m benchmarks.latency.coldstart SYSTEM FOLDER BATCH T_LAUNCH`;
prints one JSON line. Lives in its own process because a warm interpreter hides imports.
"""
from __future__ import annotations

import json
import sys
import time


def peak_rss_bytes() -> int:
    """VmHWM of this process. Not getrusage's ru_maxrss: on Linux that keeps the parent's
    high-water mark across fork+exec, so a child of a big benchmark process reports the parent's."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


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
    rss = peak_rss_bytes()
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
