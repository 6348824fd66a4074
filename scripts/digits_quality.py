#!/usr/bin/env python
"""Score the bundled digits consistency model with diffusers' reference pipeline and/or cmrt.

Loads ``--model`` with ``diffusers.ConsistencyModelPipeline.from_pretrained``,
generates ``--num-samples`` images at 1 step and at 2 steps, once with labels
balanced over the 10 classes and once with uniformly random labels (fixed
seeds), scores them with ``benchmarks.quality.digits.score_samples`` (an SVC trained
only on the held-out digits) and prints JSON.

2-step sampling uses explicit scheduler timesteps ``[k, 0]`` (indices into the
model's N-point Karras grid, 0 = sigma_max; the second step restarts from
noise level sigma_k). ``--two-step`` accepts several ``k,0`` lists to compare
and ``steps2`` for diffusers' default ``num_inference_steps=2``.

    .venv/bin/python scripts/digits_quality.py --num-samples 1000
    .venv/bin/python scripts/digits_quality.py --runtime both --batch-size 16   # cmrt vs diffusers

``--runtime cmrt`` generates with cmrt's ONNX Runtime pipeline from the model's engine
folder (built if missing), drawing the same noise as diffusers (``rng="torch"``, one
generator continued across batches), so the two runtimes score the same samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

#: Default 2-step schedule for the bundled model (N = 80): sigmas 80 -> 2.376
#: (grid index 40; the same as diffusers' num_inference_steps=2 for N = 80).
#: Chosen on seed 1 from k in 36..60 (all gave 95-98% agreement); the
#: reported figures use seed 0.
DEFAULT_TWO_STEP = "40,0"

_SUMMARY_KEYS = ("agreement", "class_spread", "max_class_fraction", "diversity", "predicted_histogram", "n")


def generate(pipe, labels, batch_size, seed, num_inference_steps=None, timesteps=None):
    import numpy as np
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(labels), batch_size):
        lab = [int(v) for v in labels[start : start + batch_size]]
        kw = {"timesteps": list(timesteps)} if timesteps is not None else {"num_inference_steps": num_inference_steps}
        res = pipe(batch_size=len(lab), class_labels=lab, generator=gen, output_type="np", **kw)
        out.append(np.asarray(res.images, dtype=np.float32))
    return np.concatenate(out)


def generate_cmrt(pipe, labels, batch_size, seed, num_inference_steps=None, timesteps=None):
    import numpy as np

    from cmrt.runtime.torch_rng import TorchCPUGenerator

    gen = TorchCPUGenerator(seed)  # torch.Generator().manual_seed(seed), continued across batches
    out = []
    for start in range(0, len(labels), batch_size):
        lab = [int(v) for v in labels[start : start + batch_size]]
        kw = {"timesteps": list(timesteps)} if timesteps is not None else {"num_inference_steps": num_inference_steps}
        out.append(pipe(batch_size=len(lab), class_labels=lab, generator=gen, rng="torch", output_type="np", **kw).images)
    return np.concatenate(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO_ROOT, "cmrt", "models", "digits"), help="ConsistencyModelPipeline folder")
    ap.add_argument("--num-samples", type=int, default=1000, help="samples per (steps, label set)")
    ap.add_argument("--seed", type=int, default=0, help="torch seed for the latents / sampling noise")
    ap.add_argument("--label-seed", type=int, default=1234, help="seed of the random label set")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--two-step", nargs="+", default=[DEFAULT_TWO_STEP],
                    help="2-step schedules: 'k,0' explicit timesteps (grid indices) or 'steps2' (num_inference_steps=2)")
    ap.add_argument("--skip-one-step", action="store_true")
    ap.add_argument("--full", action="store_true", help="also print per-class figures")
    ap.add_argument("--json-out", default=None, help="also write the JSON to this file")
    ap.add_argument("--runtime", choices=("diffusers", "cmrt", "both"), default="diffusers")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("digits_quality")

    import numpy as np
    import torch
    from diffusers import ConsistencyModelPipeline
    from diffusers.utils import logging as dlogging

    from benchmarks.quality.digits import classifier_report, score_samples

    dlogging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    pipe = ConsistencyModelPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    sched = pipe.scheduler
    runtimes = {}
    if args.runtime in ("diffusers", "both"):
        runtimes["diffusers"] = lambda labels, **kw: generate(pipe, labels, args.batch_size, args.seed, **kw)
    if args.runtime in ("cmrt", "both"):
        import cmrt
        from cmrt.build.folder import build_engine_folder
        from cmrt.engine.options import BuildOptions

        engine = build_engine_folder(args.model, out=os.path.join(REPO_ROOT, "engines", "digits-quality"),
                                     options=BuildOptions(precisions=("fp32",), max_batch=max(16, args.batch_size)))
        cm_pipe = cmrt.load(engine)
        runtimes["cmrt"] = lambda labels, **kw: generate_cmrt(cm_pipe, labels, args.batch_size, args.seed, **kw)
    n_train = int(sched.config.num_train_timesteps)

    label_sets = {
        "balanced": np.arange(args.num_samples) % 10,
        "random": np.random.default_rng(args.label_seed).integers(0, 10, size=args.num_samples),
    }
    configs = [] if args.skip_one_step else [("1-step", {"num_inference_steps": 1})]
    for spec in args.two_step:
        if spec == "steps2":
            configs.append(("2-step (num_inference_steps=2)", {"num_inference_steps": 2}))
        else:
            ts = [int(v) for v in spec.split(",")]
            configs.append((f"2-step timesteps={ts}", {"timesteps": ts}))

    result = {
        "model": args.model,
        "num_train_timesteps": n_train,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "classifier": classifier_report(),
        "results": {},
    }
    for name, kw in configs:
        sched.set_timesteps(**kw)
        sigmas = [round(float(s), 4) for s in sched.sigmas[:-1]]
        entry = {"sigmas": sigmas}
        for rname, run in runtimes.items():
            for lname, labels in label_sets.items():
                t0 = time.time()
                images = run(labels, **kw)
                dt = time.time() - t0
                sc = score_samples(images, labels)
                key = lname if len(runtimes) == 1 else f"{rname} {lname}"
                entry[key] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in sc.items() if args.full or k in _SUMMARY_KEYS}
                entry[key]["seconds"] = round(dt, 2)
                log.info("%s %s / %s labels: agreement %.4f, spread %.3f, diversity %.2f (%.1fs)",
                         rname, name, lname, sc["agreement"], sc["class_spread"], sc["diversity"], dt)
        result["results"][name] = entry

    text = json.dumps(result, indent=2)
    # keep number lists (histograms, sigmas) on one line
    text = re.sub(r"\[\s+([-0-9.eE,\s]+?)\s+\]", lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
