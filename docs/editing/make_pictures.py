"""Write the README's zero-shot editing pictures (one before/after PNG per method) with `cmrt edit`.

    .venv/bin/python -m cmrt build cmrt/models/digits --out engines/digits --precision fp32
    .venv/bin/python docs/editing/make_pictures.py engines/digits

Inputs are held-out sklearn digits (never seen in training; needs scikit-learn, the `dev`
extra) at the model's size; outputs go to docs/editing/{inpaint,colorize,superres,stroke,interpolate}.png.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("engine", help="engine folder of the digits model")
    ap.add_argument("--out", type=Path, default=HERE, help="folder for the PNGs (default: docs/editing)")
    ap.add_argument("--scale", type=int, default=4, help="enlarge the grids (nearest) for the README")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import cmrt
    from cmrt.cli import main as cmrt_main
    from benchmarks.quality.digits import digits_to_images, load_digits_split

    size = cmrt.load(args.engine).sample_size
    images8, labels = load_digits_split("heldout")
    picks = [int(np.flatnonzero(labels == d)[0]) for d in (2, 3, 5, 8)]
    digits = digits_to_images(images8[picks], size)  # [4, S, S, 3] in [0, 1]
    lab = ",".join(str(int(labels[i])) for i in picks)
    one = next(i for i in range(len(labels)) if labels[i] == 1)
    args.out.mkdir(parents=True, exist_ok=True)

    def save(arr: np.ndarray, path: Path) -> Path:
        Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(path)
        return path

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        # one input per row: the CLI takes one image and --batch; call it per digit and stack the grids
        runs = []
        for k, i in enumerate(picks):
            img = save(digits[k], t / f"d{k}.png")
            mask = np.zeros((size, size), bool)
            mask[:, size // 2 :] = True  # generate the right half
            m = t / f"m{k}.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(m)
            runs.append((k, str(img), str(m), str(labels[i])))
        stroke = digits_to_images(images8[[one]], size)[0].copy()
        stroke[size // 4 : size // 4 + max(1, size // 8), size // 4 : 3 * size // 4] = 1.0  # a white bar across a "1"
        stroke_png = save(stroke, t / "stroke.png")

        def grid(method: str, per_row: list[list[str]]) -> None:
            rows = []
            for n, extra in enumerate(per_row):
                part = t / f"{method}{n}.png"
                rc = cmrt_main(["-q", "edit", method, args.engine, *extra, "--seed", str(args.seed + n), "--out", str(part)])
                if rc != 0:
                    raise SystemExit(f"cmrt edit {method} failed ({rc})")
                rows.append(np.asarray(Image.open(part)))
            out = np.concatenate([r[: -2] if j < len(rows) - 1 else r for j, r in enumerate(rows)], axis=0)
            out = np.repeat(np.repeat(out, args.scale, axis=0), args.scale, axis=1)
            Image.fromarray(out).save(args.out / f"{method}.png", optimize=True)
            print(f"wrote {args.out / f'{method}.png'}")

        grid("inpaint", [["--image", im, "--mask", m, "--class-labels", lb] for _, im, m, lb in runs])
        grid("colorize", [["--image", im, "--class-labels", lb] for _, im, _, lb in runs])
        grid("superres", [["--image", im, "--patch-size", "4", "--class-labels", lb] for _, im, _, lb in runs])
        grid("stroke", [["--image", str(stroke_png), "--class-labels", c] for c in ("1", "4", "7")])
        rc = cmrt_main(["-q", "edit", "interpolate", args.engine, "--seed", f"{args.seed},{args.seed + 1}",
                        "--alphas", "0,0.2,0.4,0.6,0.8,1", "--class-labels", lab.split(",")[0],
                        "--scale", str(args.scale), "--out", str(args.out / "interpolate.png")])
        if rc != 0:
            raise SystemExit(f"cmrt edit interpolate failed ({rc})")
        print(f"wrote {args.out / 'interpolate.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
