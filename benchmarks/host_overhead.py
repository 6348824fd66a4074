"""How much of a cmrt call is host work outside the UNet, and where it comes from.

Run: .venv/bin/python -m benchmarks.host_overhead [ENGINE_DIR] (default engines/digits);
`--step-graph-only [--calls N] [--settings 1x1,1x2,4x2]` runs part 5 alone (BATCHxSTEPS),
for real-size models where the other parts take too long.
1. cmrt's own per-call code, with the UNet replaced by a stand-in that returns at once;
2. time outside the UNet next to the real ONNX Runtime call, per call and per step (within the
   denoising loop), with `cmrt bench`'s clock, calls back to back;
3. the first numpy operation right after `session.run` against the same operation again,
   with 2 and 1 intra-op threads, and allocating against in place;
4. the loop's post-UNet work (`scheduler.after_unet`, three in-place numpy operations) after
   nothing, after summing a 64 MB array, and after the real UNet: whatever evicts the caches
   makes the same operations 10x slower, which is the floor of any host code between UNet calls;
   and the same operations written with keyword `out=` and per-call scalars, against
   `after_unet`'s positional form;
5. whole calls through the step graph (each step's arithmetic inside ONNX Runtime) against the
   numpy loop, same folder and graph, alternated call by call: what `step_graph`'s default on
   the CPU is chosen by.
"""
from __future__ import annotations

import time

import numpy as np


def per_call(pipe, steps: int, n: int, on_start=lambda: None) -> float:
    for i in range(20):
        pipe(num_inference_steps=steps, seed=i, output_type="np")
    on_start()  # after the warm-up calls, so that they are not counted
    t0 = time.perf_counter()
    for i in range(n):
        pipe(num_inference_steps=steps, seed=i, output_type="np")
    return (time.perf_counter() - t0) / n


def main() -> None:
    import onnxruntime as ort

    import cmrt
    from cmrt.runtime import scheduler as cm

    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.host_overhead")
    p.add_argument("engine", nargs="?", default="engines/digits")
    p.add_argument("--step-graph-only", action="store_true", help="only part 5: the step graph against the numpy loop")
    p.add_argument("--calls", type=int, default=300, help="part 5: timed calls per pipeline and setting")
    p.add_argument("--settings", default="1x1,1x2,4x2", help="part 5: BATCHxSTEPS, comma-separated")
    args = p.parse_args()
    engine = args.engine
    settings = [tuple(int(v) for v in s.split("x")) for s in args.settings.split(",")]
    if args.step_graph_only:
        compare_step_graph(engine, args.calls, settings)
        return
    pipe = cmrt.load(engine)
    real = pipe.backend.run
    pipe.backend.run = lambda s, t, l: np.zeros_like(s)
    for steps in (1, 2):
        print(f"{steps} step(s), stand-in UNet: cmrt code {per_call(pipe, steps, 2000) * 1e6:.0f} us per call")
    # the same clock and loop marks as `cmrt bench` (see benchmarks/latency/systems.py)
    from benchmarks.latency.systems import UNetClock

    clock = UNetClock()
    pipe.backend.run = clock.wrap(real)
    pipe.step_plan = clock.loop_starts_after(pipe.step_plan)
    pipe.postprocess_image = clock.loop_ends_before(pipe.postprocess_image)

    def reset() -> None:
        clock.seconds = clock.loop_seconds = 0.0

    for steps in (1, 2):
        total = per_call(pipe, steps, 300, on_start=reset) * 300
        outside, in_loop = total - clock.seconds, clock.loop_seconds - clock.seconds
        print(f"{steps} step(s), real UNet: {total / 300 * 1e3:.2f} ms per call, outside the UNet "
              f"{outside / 300 * 1e6:.0f} us per call ({100 * outside / total:.1f}%), "
              f"{in_loop / 300 / steps * 1e6:.0f} us per step ({100 * in_loop / clock.loop_seconds:.1f}% of the loop)")

    m = pipe.manifest
    cfg = pipe.scheduler_config
    k = cm.step_constants(cm.make_schedule(cfg, num_inference_steps=1), cfg)[0]
    s = m.sample_size
    x = np.random.default_rng(0).standard_normal((1, m.in_channels, s, s), dtype=np.float32) / k.divisor
    feeds = {"sample": x, "timestep": np.full(1, k.t, np.float32)}
    if m.num_class_embeds:
        feeds["class_labels"] = np.array([0], np.int64)
    for threads in (2, 1):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(m.onnx_path("fp32")), so, providers=["CPUExecutionProvider"])
        acc = np.zeros(3)
        for i in range(520):
            t1 = time.perf_counter()
            o = sess.run(None, feeds)[0]
            t2 = time.perf_counter()
            o * k.c_out
            t3 = time.perf_counter()
            o * k.c_out
            t4 = time.perf_counter()
            if i >= 20:
                acc += (t2 - t1, t3 - t2, t4 - t3)
        run, first, again = acc / 500 * 1e6
        print(f"{threads} thread(s): UNet {run / 1e3:.2f} ms; first numpy op after it {first:.0f} us, "
              f"the same op again {again:.1f} us")
    # an allocation right after the UNet pays for glibc sorting the chunks ONNX Runtime freed
    buf = np.empty_like(x)
    for what, op in (("allocating (o * c)", lambda o: o * k.c_out),
                     ("in place (np.multiply(o, c, out=buf))", lambda o: np.multiply(o, k.c_out, out=buf))):
        acc = []
        for i in range(320):
            o = real(x, feeds["timestep"], feeds.get("class_labels"))
            t1 = time.perf_counter()
            op(o)
            acc.append(time.perf_counter() - t1)
        print(f"first op after the UNet, {what}: {np.median(acc[20:]) * 1e6:.1f} us")

    sweep = np.ones(64 << 18, dtype=np.float32)  # 64 MB
    skip, out = np.ones_like(x), np.empty_like(x)
    unet = lambda: real(x, feeds["timestep"], feeds.get("class_labels"))  # noqa: E731
    for what, before in (("nothing", lambda: None), ("a 64 MB sum", sweep.sum), ("the real UNet", unet)):
        acc = []
        for i in range(320):
            before()
            t1 = time.perf_counter()
            cm.after_unet(x, skip, k, out, None, True)
            acc.append(time.perf_counter() - t1)
        print(f"post-UNet step work (3 in-place ops) after {what}: {np.median(acc[20:]) * 1e6:.1f} us")

    # the same three operations written with keyword `out=`, `+=` and bounds built per call (the
    # loop's form until this comparison), against `scheduler.after_unet`; alternated call by call
    def keyword_form(o, out=out):
        np.multiply(o, k.c_out, out=out)
        out += skip
        cm.clip_ufunc(out, np.float32(-1.0), np.float32(1.0), out=out)

    forms = {"keyword form": keyword_form, "scheduler.after_unet": lambda o: cm.after_unet(o, skip, k, out, None, True)}
    acc = {name: [] for name in forms}
    for i in range(400):
        for name, form in forms.items():
            o = unet()
            t1 = time.perf_counter()
            form(o)
            acc[name].append(time.perf_counter() - t1)
    print("post-UNet step work after the real UNet: " + ", ".join(
        f"{name} {np.median(a[20:]) * 1e6:.1f} us" for name, a in acc.items()))
    compare_step_graph(engine, args.calls, settings)


def compare_step_graph(engine: str, calls: int, settings) -> None:
    """Median call time through the step graph and through the numpy loop (both on the graph the folder's
    CPU default runs: Winograd where kept), alternated call by call, after warm-up calls."""
    import cmrt

    batches = sorted({b for b, _ in settings})
    pipes = {"numpy loop": cmrt.load(engine, device="cpu", warmup=batches),
             "step graph": cmrt.load(engine, device="cpu", step_graph=True, warmup=batches)}
    graph = "Winograd" if pipes["step graph"].backend.extra_inputs else "plain"
    print(f"step graph against the numpy loop on {engine} ({graph} graph): {calls} calls per pipeline and setting")
    warm = max(2, min(20, calls // 10))
    for batch, steps in settings:
        acc = {name: [] for name in pipes}
        for i in range(calls + warm):
            for name, pipe in pipes.items():
                t0 = time.perf_counter()
                pipe(batch_size=batch, num_inference_steps=steps, seed=i, output_type="np")
                acc[name].append(time.perf_counter() - t0)
        med = {name: float(np.median(a[warm:])) for name, a in acc.items()}
        print(f"batch {batch}, {steps} step(s): " + ", ".join(f"{name} {m * 1e3:.3f} ms" for name, m in med.items())
              + f"; step graph / numpy loop {med['step graph'] / med['numpy loop']:.3f}")


if __name__ == "__main__":
    main()
