"""Parity sweep: cmrt.runtime.torch_rng (numpy) vs torch's CPU generator.

For seeds 0..99 (default) and each shape, draws ``torch.randn(shape, generator=
torch.Generator().manual_seed(seed))`` and the numpy twin, and prints per shape the max
absolute difference and the fraction of values that are not bit-identical; then a
randint and a mixed-sequence check, and the numpy randn time for the largest shape.

    python benchmarks/torch_rng_parity.py [--seeds 100] [--kernel auto|avx2|scalar]
    ATEN_CPU_CAPABILITY=default python benchmarks/torch_rng_parity.py   # generic kernel

Needs torch (export extra); the module under test never imports it.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.latency.machine import cpu_flags, cpu_model  # noqa: E402
from cmrt.runtime.torch_rng import TorchCPUGenerator, default_normal_kernel  # noqa: E402

LATENT_SHAPES = [(b, 3, r, r) for r in (64, 256) for b in (1, 3, 8)]
ODD_SHAPES = [(1,), (5,), (15,), (16,), (17,), (31,), (33,), (2, 3, 5, 7)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=100, help="sweep seeds 0..N-1 (default 100)")
    ap.add_argument("--kernel", default="auto", choices=["auto", "avx2", "scalar"])
    args = ap.parse_args()
    kernel = default_normal_kernel() if args.kernel == "auto" else args.kernel

    print(f"torch {torch.__version__}  numpy {np.__version__}  python {platform.python_version()}")
    print(f"torch cpu capability: {torch.backends.cpu.get_cpu_capability()}   numpy kernel: {kernel}")
    print(f"cpu: {cpu_model()}")
    print(f"cpu flags: {' '.join(cpu_flags()) or '(none found)'}")
    print(f"seeds 0..{args.seeds - 1}")
    print(f"{'shape':>18} {'max|diff|':>10} {'non-identical':>14} {'state ok':>8}")

    worst_all, bad_all, n_all = 0.0, 0, 0
    for shape in LATENT_SHAPES + ODD_SHAPES:
        worst, bad, n, state_ok = 0.0, 0, 0, True
        for seed in range(args.seeds):
            tg = torch.Generator().manual_seed(seed)
            ref = torch.randn(shape, generator=tg).numpy()
            g = TorchCPUGenerator(seed, kernel=kernel)
            ours = g.randn(shape)
            worst = max(worst, float(np.max(np.abs(ref - ours))))
            bad += int(np.count_nonzero(ref.view(np.int32) != ours.view(np.int32)))
            n += ref.size
            state_ok &= bool(np.array_equal(tg.get_state().numpy(), g.get_state()))
        worst_all, bad_all, n_all = max(worst_all, worst), bad_all + bad, n_all + n
        print(f"{'x'.join(map(str, shape)):>18} {worst:>10.3g} {bad / n:>14.6%} {str(state_ok):>8}")
    print(f"{'ALL randn':>18} {worst_all:>10.3g} {bad_all / n_all:>14.6%}   ({n_all} values)")

    # randint (both the 32-bit and the 64-bit draw) and an interleaved sequence
    ok_int = ok_seq = True
    for seed in range(args.seeds):
        tg = torch.Generator().manual_seed(seed)
        g = TorchCPUGenerator(seed, kernel=kernel)
        for lo, hi, size in [(0, 1000, (8,)), (-5, 2**40, (4,))]:
            ok_int &= np.array_equal(torch.randint(lo, hi, size, generator=tg).numpy(), g.randint(lo, hi, size))
        ok_seq &= np.array_equal(torch.randn(5, generator=tg).numpy(), g.randn(5))
        a = torch.randn(1, 3, 64, 64, generator=tg).numpy()
        ok_seq &= float(np.max(np.abs(a - g.randn(1, 3, 64, 64)))) <= 1e-6
        ok_seq &= np.array_equal(tg.get_state().numpy(), g.get_state())
    print(f"randint exact: {ok_int}   randn/randint/randn sequence in sync: {ok_seq}")

    g = TorchCPUGenerator(0, kernel=kernel)
    t0 = time.perf_counter()
    g.randn(8, 3, 256, 256)
    t_np = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch.randn(8, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    t_torch = time.perf_counter() - t0
    print(f"randn(8,3,256,256): numpy {t_np * 1000:.0f} ms, torch {t_torch * 1000:.0f} ms")
    return 0 if worst_all <= 1e-6 and ok_int and ok_seq else 1


if __name__ == "__main__":
    sys.exit(main())
