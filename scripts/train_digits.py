#!/usr/bin/env python
"""Train cmrt's bundled class-conditional consistency model on 8x8 digits.

Improved consistency training (iCT; Song & Dhariwal 2023, "Improved techniques
for training consistency models"), shortened for a CPU budget of minutes:

* no EMA teacher: the target is the same network at the neighbouring (smaller)
  noise level, with gradients stopped and the same dropout mask (same RNG);
* pseudo-Huber loss with c = 0.00054 * sqrt(d), weighted by
  1 / (sigma_{i+1} - sigma_i);
* noise-level index drawn from a discretised lognormal (P_mean -1.1, P_std 2.0)
  on a Karras grid (sigma 0.002..80, rho 7) of N points;
* N doubles from --n-start to --n-max (capped, as suits a short budget) in
  equal stages of training progress, and the Adam learning rate follows a cosine
  from --lr to --lr-min;
* the parameterisation is exactly diffusers' CMStochasticIterativeScheduler /
  ConsistencyModelPipeline: the UNet sees x * c_in(sigma) with
  c_in = 1 / sqrt(sigma^2 + sigma_data^2) and timestep 250 * ln(sigma + 1e-44),
  and f = c_skip(sigma) * x + c_out(sigma) * F with the boundary-condition
  scalings (sigma - sigma_min).

Data: the "train" part of the fixed split in ``benchmarks.quality.digits`` (the
held-out part trains the independent judging classifier), nearest-upscaled to
``--sample-size``, gray replicated in 3 channels, in [-1, 1].

Training progress is measured in wall time (``--minutes``) or, for an exactly
reproducible run, in iterations (``--iterations``). A checkpoint is written
atomically every ``--checkpoint-minutes`` and on Ctrl-C / SIGTERM; ``--resume``
continues from it. The result is written atomically in diffusers'
``ConsistencyModelPipeline.save_pretrained`` layout to ``--output``.

The bundled model (cmrt/models/digits) was made with

    nice -n 10 .venv/bin/python scripts/train_digits.py --iterations 5000 --threads 1 --seed 0 --sample-size 16

(5,000 iterations, 1 thread because the 2 cores were shared: 48.5 min wall
there; with --threads 2 on 2 free cores the same run takes about 26-27 min,
3.1-3.3 it/s). ``--minutes 25`` instead trains for a fixed wall time.
Check the result with ``scripts/digits_quality.py``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks.quality.digits import (  # noqa: E402
    DIGITS_HOLDOUT_FRACTION,
    DIGITS_SPLIT_SEED,
    digits_to_images,
    load_digits_split,
)

log = logging.getLogger("train_digits")

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
SIGMA_DATA = 0.5
RHO = 7.0
P_MEAN = -1.1
P_STD = 2.0


# --------------------------------------------------------------------------- #
# consistency-model maths (identical to diffusers' CMStochasticIterativeScheduler)
# --------------------------------------------------------------------------- #
def karras_sigmas(n: int) -> np.ndarray:
    """Ascending Karras grid of ``n`` sigmas from SIGMA_MIN to SIGMA_MAX (float64)."""
    ramp = np.linspace(0.0, 1.0, n)
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    return (lo + ramp * (hi - lo)) ** RHO


def lognormal_index_probs(sigmas: np.ndarray) -> np.ndarray:
    """iCT's p(i) for i in 0..N-2 (pair sigma_i < sigma_{i+1})."""
    log_s = np.log(sigmas)
    cdf = np.array([math.erf((v - P_MEAN) / (math.sqrt(2.0) * P_STD)) for v in log_s])
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def sigma_to_t(sigma: torch.Tensor) -> torch.Tensor:
    return 1000 * 0.25 * torch.log(sigma + 1e-44)


def denoise(unet, x: torch.Tensor, sigma: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Consistency function f(x, sigma); ``sigma`` has shape (B,)."""
    s = sigma.view(-1, 1, 1, 1)
    c_in = 1.0 / torch.sqrt(s**2 + SIGMA_DATA**2)
    c_skip = SIGMA_DATA**2 / ((s - SIGMA_MIN) ** 2 + SIGMA_DATA**2)
    c_out = (s - SIGMA_MIN) * SIGMA_DATA / torch.sqrt(s**2 + SIGMA_DATA**2)
    out = unet(x * c_in, sigma_to_t(sigma), class_labels=labels, return_dict=False)[0]
    return c_skip * x + c_out * out


# --------------------------------------------------------------------------- #
# model / schedules
# --------------------------------------------------------------------------- #
def unet_config(args) -> dict:
    return dict(
        sample_size=args.sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        layers_per_block=args.layers_per_block,
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"),
        up_block_types=("ResnetUpsampleBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        attention_head_dim=8,
        norm_num_groups=32,
        resnet_time_scale_shift="scale_shift",
        dropout=args.dropout,
        num_class_embeds=10,
    )


def n_stages(args) -> int:
    return int(round(math.log2(args.n_max / args.n_start))) + 1


def discretisation_n(args, progress: float) -> int:
    """N doubles from n_start to n_max in equal stages of progress (0..1)."""
    k = min(int(progress * n_stages(args)), n_stages(args) - 1)
    return int(min(args.n_start * 2**k, args.n_max))


def learning_rate(args, progress: float) -> float:
    p = min(max(progress, 0.0), 1.0)
    return args.lr_min + 0.5 * (args.lr - args.lr_min) * (1.0 + math.cos(math.pi * p))


# --------------------------------------------------------------------------- #
# saving
# --------------------------------------------------------------------------- #
def atomic_torch_save(obj, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="ckpt-", suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def export_pipeline(state_dict: dict, args, final_n: int, output: str, info: dict) -> None:
    """Write a ConsistencyModelPipeline folder to ``output`` atomically."""
    from diffusers import CMStochasticIterativeScheduler, ConsistencyModelPipeline, UNet2DModel

    unet = UNet2DModel(**unet_config(args))
    unet.load_state_dict(state_dict)
    n_params = sum(p.numel() for p in unet.parameters())
    dtype = torch.float32 if n_params * 4 <= 8 * 1024 * 1024 else torch.float16
    if dtype != torch.float32:
        unet = unet.to(dtype)
    unet = unet.eval()
    scheduler = CMStochasticIterativeScheduler(
        num_train_timesteps=final_n,
        sigma_min=SIGMA_MIN,
        sigma_max=SIGMA_MAX,
        sigma_data=SIGMA_DATA,
        s_noise=1.0,
        rho=RHO,
        clip_denoised=True,
    )
    pipe = ConsistencyModelPipeline(unet=unet, scheduler=scheduler)
    output = os.path.abspath(output)
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".digits-tmp-", dir=parent)
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        info = dict(info, n_params=n_params, weights_dtype=str(dtype).replace("torch.", ""))
        with open(os.path.join(tmp, "cmrt_training.json"), "w") as fh:
            json.dump(info, fh, indent=2, sort_keys=True)
            fh.write("\n")
        for root, dirs, files in os.walk(tmp):  # mkdtemp / safetensors leave 0700 / 0600
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        old = None
        if os.path.exists(output):
            old = tempfile.mkdtemp(prefix=".digits-old-", dir=parent)
            os.rmdir(old)
            os.replace(output, old)
        os.replace(tmp, output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote %s (%d parameters, %s, N=%d)", output, n_params, dtype, final_n)


# --------------------------------------------------------------------------- #
# training
# --------------------------------------------------------------------------- #
class _Stop(Exception):
    pass


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--output", default=os.path.join(REPO_ROOT, "cmrt", "models", "digits"), help="pipeline folder to write")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=25.0, help="training budget in wall-clock minutes (progress = elapsed / budget)")
    budget.add_argument("--iterations", type=int, default=None, help="training budget in iterations (exactly reproducible); overrides --minutes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-size", type=int, default=16, help="model image size (digits are upscaled nearest-neighbour)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4, help="initial Adam learning rate (cosine decay)")
    ap.add_argument("--lr-min", type=float, default=2e-5, help="final learning rate")
    ap.add_argument("--n-start", type=int, default=10, help="initial discretisation N")
    ap.add_argument("--n-max", type=int, default=80, help="final (cap) discretisation N")
    ap.add_argument("--layers-per-block", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the weights (evaluation copy only, not a teacher)")
    ap.add_argument("--export-weights", choices=("ema", "raw"), default="ema", help="which weights to write to --output")
    ap.add_argument("--checkpoint", default=os.path.join(tempfile.gettempdir(), "cmrt_train_digits", "checkpoint.pt"))
    ap.add_argument("--checkpoint-minutes", type=float, default=2.0)
    ap.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    ap.add_argument("--export-only", action="store_true", help="only export --checkpoint to --output (with --export-weights)")
    ap.add_argument("--log-file", default=None, help="also log to this file")
    ap.add_argument("--log-every", type=float, default=60.0, help="seconds between log lines")
    return ap.parse_args(argv)


def setup_logging(log_file):
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_file)
    torch.set_num_threads(args.threads)
    if args.n_max < args.n_start or (args.n_max / args.n_start) != 2 ** (n_stages(args) - 1):
        raise SystemExit("--n-max must be --n-start times a power of two")

    from diffusers import UNet2DModel

    if args.export_only:
        ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        saved = argparse.Namespace(**ck["args"])
        export_pipeline(ck[args.export_weights], saved, ck["final_n"], args.output, dict(ck["info"], exported_weights=args.export_weights))
        return 0

    # ---------------- data ----------------
    images8, labels = load_digits_split("train")
    x_all = torch.from_numpy(digits_to_images(images8, args.sample_size)).permute(0, 3, 1, 2).contiguous() * 2.0 - 1.0
    y_all = torch.from_numpy(labels).long()
    n_data = len(y_all)
    dim = x_all[0].numel()
    huber_c = 0.00054 * math.sqrt(dim)
    log.info("data: %d training digits (split seed %d, held-out fraction %.2f) at %dx%d, d=%d, pseudo-Huber c=%.5f",
             n_data, DIGITS_SPLIT_SEED, DIGITS_HOLDOUT_FRACTION, args.sample_size, args.sample_size, dim, huber_c)

    # ---------------- model ----------------
    torch.manual_seed(args.seed)
    unet = UNet2DModel(**unet_config(args)).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.Adam(unet.parameters(), lr=args.lr)
    n_params = sum(p.numel() for p in unet.parameters())
    log.info("UNet2DModel: %d parameters, config %s", n_params, json.dumps(unet_config(args)))

    gen = torch.Generator().manual_seed(args.seed + 1)  # data order, noise levels, noise
    it, elapsed, perm, perm_pos = 0, 0.0, None, 0
    if args.resume:
        ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        unet.load_state_dict(ck["raw"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen_state"])
        torch.set_rng_state(ck["torch_rng"])
        it, elapsed, perm, perm_pos = ck["it"], ck["elapsed"], ck["perm"], ck["perm_pos"]
        log.info("resumed from %s at iteration %d (%.1f min)", args.checkpoint, it, elapsed / 60)

    budget_s = None if args.iterations else args.minutes * 60.0

    def progress() -> float:
        if args.iterations:
            return it / args.iterations
        return elapsed / budget_s

    info = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "seed": args.seed,
        "sample_size": args.sample_size,
        "split_seed": DIGITS_SPLIT_SEED,
        "holdout_fraction": DIGITS_HOLDOUT_FRACTION,
        "n_train_digits": n_data,
        "upscaling": "nearest",
        "method": "iCT (Song & Dhariwal 2023): no EMA teacher, pseudo-Huber, lognormal index, 1/(dsigma) weight",
        "n_start": args.n_start,
        "n_max": args.n_max,
        "lr": args.lr,
        "lr_min": args.lr_min,
        "batch_size": args.batch_size,
        "dropout": args.dropout,
        "ema_decay": args.ema_decay,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }

    def checkpoint(final: bool = False):
        info.update(iterations=it, train_minutes=round(elapsed / 60, 2))
        atomic_torch_save(
            {
                "raw": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "gen_state": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "it": it, "elapsed": elapsed, "perm": perm, "perm_pos": perm_pos,
                "final_n": discretisation_n(args, min(progress(), 1.0)), "args": vars(args), "info": dict(info),
                "done": final,
            },
            args.checkpoint,
        )

    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)

    cached_n, sigmas_t, probs_t = None, None, None
    t_last = time.monotonic()
    t_ckpt = t_last
    t_log = t_last
    loss_acc, loss_cnt = 0.0, 0
    bar = tqdm(total=args.iterations if args.iterations else int(budget_s), initial=it if args.iterations else int(elapsed),
               unit="it" if args.iterations else "s", mininterval=10.0, dynamic_ncols=True, desc="iCT digits")
    try:
        while progress() < 1.0:
            if stop["flag"]:
                raise _Stop()
            p = progress()
            n = discretisation_n(args, p)
            if n != cached_n:
                sig = karras_sigmas(n)
                sigmas_t = torch.from_numpy(sig).float()
                probs_t = torch.from_numpy(lognormal_index_probs(sig)).float()
                log.info("iteration %d (progress %.3f): discretisation N = %d", it, p, n)
                cached_n = n
            lr = learning_rate(args, p)
            for g in opt.param_groups:
                g["lr"] = lr

            # batch (epoch-wise permutation)
            if perm is None or perm_pos + args.batch_size > n_data:
                perm, perm_pos = torch.randperm(n_data, generator=gen), 0
            idx = perm[perm_pos : perm_pos + args.batch_size]
            perm_pos += args.batch_size
            x0, y = x_all[idx], y_all[idx]
            i = torch.multinomial(probs_t, len(idx), replacement=True, generator=gen)
            s_lo, s_hi = sigmas_t[i], sigmas_t[i + 1]
            z = torch.randn(x0.shape, generator=gen)

            rng = torch.get_rng_state()  # same dropout mask for target and prediction
            with torch.no_grad():
                target = denoise(unet, x0 + s_lo.view(-1, 1, 1, 1) * z, s_lo, y)
            torch.set_rng_state(rng)
            pred = denoise(unet, x0 + s_hi.view(-1, 1, 1, 1) * z, s_hi, y)
            dist = torch.sqrt(((pred - target) ** 2).flatten(1).sum(1) + huber_c**2) - huber_c
            loss = (dist / (s_hi - s_lo)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for pe, pr in zip(ema.parameters(), unet.parameters()):
                    pe.lerp_(pr, 1.0 - args.ema_decay)
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"non-finite loss at iteration {it}")

            it += 1
            now = time.monotonic()
            elapsed += now - t_last
            t_last = now
            loss_acc += loss.item()
            loss_cnt += 1
            bar.update(1 if args.iterations else int(elapsed) - bar.n)
            if now - t_log >= args.log_every:
                log.info("it %d  %.1f min  N=%d  lr=%.2e  loss=%.4f  (%.2f it/s)", it, elapsed / 60, n, lr,
                         loss_acc / loss_cnt, loss_cnt / (now - t_log))
                t_log, loss_acc, loss_cnt = now, 0.0, 0
            if now - t_ckpt >= args.checkpoint_minutes * 60:
                checkpoint()
                t_ckpt = time.monotonic()
    except (KeyboardInterrupt, _Stop):
        bar.close()
        checkpoint()
        log.warning("interrupted at iteration %d; checkpoint saved to %s (continue with --resume)", it, args.checkpoint)
        return 130
    bar.close()

    final_n = discretisation_n(args, 1.0)
    checkpoint(final=True)
    info.update(final_n=final_n, exported_weights=args.export_weights)
    log.info("done: %d iterations in %.1f min, final N=%d", it, elapsed / 60, final_n)
    export_pipeline((ema if args.export_weights == "ema" else unet).state_dict(), args, final_n, args.output, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
