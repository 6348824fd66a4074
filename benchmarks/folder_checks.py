"""What checking an engine folder costs on load: the manifest's own checks, and hashing its files
without and with the per-process hash cache (keyed on inode, size, mtime and ctime).

Run: .venv/bin/python -m benchmarks.folder_checks [ENGINE_DIR ...] [--big-gib G]
(default engines/digits). `--big-gib` also times a copy of the first folder with one more
file of G GiB of random bytes in its manifest (hashing costs the same whatever the bytes: the
size of ImageNet-64's fp32 weights is about 1.2 GB). Medians of 5 runs; "cold" clears the
hash cache before each run (what a fresh process pays), "cached" does not (a second load in
one process). The page cache stays warm in both: cold disks cost more.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def median_ms(fn, runs: int = 5, before=lambda: None) -> float:
    times = []
    for _ in range(runs):
        before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(folder: Path) -> dict[str, float]:
    import cmrt.engine.manifest as mf

    manifest = mf.parse_manifest(folder)
    total = sum(rec["bytes"] for rec in manifest.files.values())
    mf.check_files(manifest)  # page cache warm
    return {
        "bytes": total,
        "parse_ms": median_ms(lambda: mf.parse_manifest(folder), runs=50),
        "sizes_only_ms": median_ms(lambda: mf.check_files(manifest, hashes=False), runs=50),
        "hash_cold_ms": median_ms(lambda: mf.check_files(manifest), before=mf._HASH_CACHE.clear),
        "hash_cached_ms": median_ms(lambda: mf.check_files(manifest), runs=50),
    }


def with_big_file(folder: Path, gib: float, where: Path) -> Path:
    """A copy of `folder` whose manifest also lists a `gib` GiB file (written older than the racy window)."""
    import os

    from cmrt.engine.manifest import file_record, parse_manifest, write_manifest

    copy = where / "big"
    shutil.copytree(folder, copy)
    with open(copy / "big.bin", "wb") as f:
        for _ in range(int(gib * 1024)):
            f.write(os.urandom(1 << 20))
    data = dict(parse_manifest(copy).data)
    time.sleep(2.5)  # past RACY_SECONDS, so that the cache may keep its hash
    data["files"] = {**data["files"], "big.bin": file_record(copy, "big.bin")}
    write_manifest(copy, data)
    return copy


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folders", nargs="*", type=Path, default=[Path("engines/digits")])
    p.add_argument("--big-gib", type=float, default=0.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = list(args.folders)
        if args.big_gib:
            folders.append(with_big_file(folders[0], args.big_gib, Path(tmp)))
        print("| folder | bytes hashed | manifest checks | sizes only | hashes, cold | hashes, cached |")
        print("|---|---|---|---|---|---|")
        for folder in folders:
            r = measure(folder)
            print(f"| {folder.name} | {r['bytes'] / 1e6:.1f} MB | {r['parse_ms']:.2f} ms | {r['sizes_only_ms']:.3f} ms "
                  f"| {r['hash_cold_ms']:.0f} ms | {r['hash_cached_ms']:.3f} ms |")


if __name__ == "__main__":
    main()
