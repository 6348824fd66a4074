"""ONNX Runtime's fused MultiHeadAttention (com.microsoft, flash attention on the CPU) against the
attention the UNet export contains (MatMul, Softmax, MatMul): latency and the working memory of
one call, for one attention block's shapes.

Run: .venv/bin/python -m benchmarks.attention_fused [--batch 4] [--tokens 1024] [--channels 384] [--heads 6]

The defaults are ImageNet-64's 32x32 attention blocks. Why: the exported attention materializes
a [batch, heads, tokens, tokens] score matrix and its softmax, which sets much of the batch-4
activation peak; a fused kernel never holds them whole. This measures the lever before the graph
is rewritten to use it.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def rss_mib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def attention_model(kind: str, b: int, s: int, c: int, h: int):
    """q, k, v [b, s, c] -> y [b, s, c]: the exported pattern ("unfused") or one MultiHeadAttention."""
    from onnx import TensorProto, helper, numpy_helper

    d = c // h
    if kind == "fused":
        nodes, inits = [helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", num_heads=h)], []
    else:
        inits = [numpy_helper.from_array(np.array([b, s, h, d], np.int64), "s4"),
                 numpy_helper.from_array(np.array([b, s, c], np.int64), "s3"),
                 numpy_helper.from_array(np.array(d ** -0.25, np.float32), "scale")]  # split between q and k, as diffusers does
        nodes = []
        for t in "qkv":
            nodes += [helper.make_node("Reshape", [t, "s4"], [t + "4"]), helper.make_node("Transpose", [t + "4"], [t + "h"], perm=[0, 2, 1, 3])]
        nodes += [
            helper.make_node("Mul", ["qh", "scale"], ["qs"]),
            helper.make_node("Transpose", ["kh"], ["kT"], perm=[0, 1, 3, 2]),
            helper.make_node("Mul", ["kT", "scale"], ["ks"]),
            helper.make_node("MatMul", ["qs", "ks"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
            helper.make_node("MatMul", ["probs", "vh"], ["o"]),
            helper.make_node("Transpose", ["o"], ["oT"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", ["oT", "s3"], ["y"]),
        ]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info(t, TensorProto.FLOAT, [b, s, c]) for t in "qkv"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def main(argv=None) -> int:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--channels", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args(argv)
    if min(args.batch, args.tokens, args.channels, args.heads, args.runs) < 1 or args.channels % args.heads:
        p.error("every size must be >= 1 and --channels a multiple of --heads")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_mem_pattern = False  # as cmrt opens its sessions
    rng = np.random.default_rng(0)
    feeds = {t: rng.standard_normal((args.batch, args.tokens, args.channels)).astype(np.float32) for t in "qkv"}
    outs = {}
    for kind in ("unfused", "fused"):
        model = attention_model(kind, args.batch, args.tokens, args.channels, args.heads)
        session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        before = rss_mib()
        outs[kind] = session.run(None, feeds)[0]
        grown = rss_mib() - before
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            session.run(None, feeds)
            times.append((time.perf_counter() - t0) * 1e3)
        print(f"{kind:8s} {float(np.median(times)):8.2f} ms  first call's memory growth {grown} MiB")
    print(f"max abs difference {float(np.abs(outs['fused'] - outs['unfused']).max()):.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
