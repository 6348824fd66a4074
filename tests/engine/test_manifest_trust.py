"""The engine folder as untrusted data: the tamper suite.

Every edit of a field the runtime reads, every path that leads outside the folder, every
file left without a checksum and every malformed manifest ends in `EngineFolderError`
(a ValueError) that says to rebuild, never in another exception or in different images.
Edits are made two ways: by hand (the manifest's digest no longer matches) and resealed
with a fresh digest (what a crafted or badly built folder looks like), which the schema and
the containment checks must still refuse.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import cmrt
from cmrt.engine.errors import EngineFolderError
from cmrt.engine.manifest import read_manifest

# Fields the runtime reads and a different, plausible value for each: a hand edit of any is refused.
FIELD_EDITS = [
    ("scheduler.sigma_max", 40.0),
    ("scheduler.sigma_min", 0.004),
    ("scheduler.sigma_data", 0.25),
    ("scheduler.num_train_timesteps", 41),
    ("scheduler.rho", 3.0),
    ("scheduler.s_noise", 0.5),
    ("scheduler.clip_denoised", False),
    ("unet.sample_size", 32),
    ("unet.in_channels", 1),
    ("unet.out_channels", 1),
    ("unet.num_class_embeds", 5),
    ("build_options.min_batch", 2),
    ("build_options.opt_batch", 8),
    ("build_options.max_batch", 16),
    ("onnx.fp32.file", "unet.fp32.onnx.data"),
    ("onnx.fp32.external_data", None),
    ("onnx.fp32.inputs", []),
    ("onnx.fp32.winograd.filters.0.offset", 4),
    ("onnx.fp32.winograd.filters.0.input", "other"),
    ("onnx.fp32.winograd.weights_file", "unet.fp32.onnx"),
    ("onnx.fp32.batching.chunk", 2),
    ("files.unet.fp32.onnx.sha256", "0" * 64),
    ("source.model", "someone/else"),
    ("build_key", "f" * 64),
]


def _split(path: str) -> list[str]:
    """'files.unet.fp32.onnx.sha256' -> ['files', 'unet.fp32.onnx', 'sha256'] (file names hold dots)."""
    if path.startswith("files."):
        name, _, last = path[len("files."):].rpartition(".")
        return ["files", name, last]
    return path.split(".")


def set_field(data: dict, path: str, value) -> None:
    *parents, last = _split(path)
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def write_raw(folder: Path, data) -> None:
    """A hand edit: the manifest rewritten as the build writes it, without a new digest."""
    (folder / "manifest.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def reseal(folder: Path, data) -> None:
    """A crafted edit: rewritten with a digest that matches (what `write_manifest` would refuse to write)."""
    from cmrt.engine.manifest import DIGEST_KEY, manifest_digest

    data = {k: v for k, v in data.items() if k != DIGEST_KEY}
    write_raw(folder, {**data, DIGEST_KEY: manifest_digest(data)})


@pytest.fixture
def engine(small_models, tmp_path) -> Path:
    folder = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], folder)
    return folder


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def load(folder: Path):
    return cmrt.load(folder, backend="onnxruntime", device="cpu")


@pytest.mark.parametrize("path,value", FIELD_EDITS, ids=[p for p, _ in FIELD_EDITS])
def test_a_hand_edit_of_any_field_is_refused(engine, path, value):
    data = manifest_of(engine)
    set_field(data, path, value)
    write_raw(engine, data)
    with pytest.raises(EngineFolderError, match="rebuild"):
        load(engine)


def test_turning_the_winograd_graph_on_or_off_by_hand_is_refused(engine):
    data = manifest_of(engine)
    wino = data["onnx"]["fp32"]["winograd"]
    wino["used"] = not wino["used"]  # the build's choice is timed, so either may be the original
    write_raw(engine, data)
    with pytest.raises(EngineFolderError, match="changed after the build"):
        load(engine)


def test_every_leaf_the_schema_checks_is_covered_by_the_digest(engine):
    """Beyond the list above: each leaf of the manifest, changed alone, is refused."""
    data = manifest_of(engine)
    leaves: list[tuple[list, object]] = []

    def walk(node, trail):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, trail + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, trail + [i])
        else:
            leaves.append((trail, node))

    walk(data, [])
    accepted = []
    for trail, value in leaves:
        if trail == ["manifest_sha256"]:
            continue
        changed = json.loads(json.dumps(data))
        node = changed
        for key in trail[:-1]:
            node = node[key]
        node[trail[-1]] = (not value) if isinstance(value, bool) else (value + 1 if isinstance(value, (int, float)) else
                                                                       (1 if value is None else str(value) + "x"))
        write_raw(engine, changed)
        try:
            read_manifest(engine)
            accepted.append(".".join(map(str, trail)))
        except EngineFolderError:
            pass
    assert len(leaves) > 50 and not accepted, accepted


def test_the_build_writes_a_digest_and_the_folder_loads(engine):
    data = manifest_of(engine)
    assert len(data["manifest_sha256"]) == 64
    # reformatting is not an edit: the digest is over the content
    (engine / "manifest.json").write_text(json.dumps(data))
    assert load(engine)(seed=0, output_type="np").images.shape == (1, 16, 16, 3)


def test_a_folder_of_the_previous_format_is_refused_with_rebuild(engine):
    data = manifest_of(engine)
    data["format_version"] = 1
    del data["manifest_sha256"]
    write_raw(engine, data)
    with pytest.raises(EngineFolderError, match="format 1.*rebuild"):
        load(engine)


# --- files: outside the folder, symlinks, checksums ---------------------------------------
@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd", "sub/unet.fp32.onnx", "..", ".hidden.onnx", ""])
def test_a_file_path_that_is_not_a_plain_name_in_the_folder_is_refused(engine, name):
    outside = engine.parent / "outside.onnx"
    shutil.copy(engine / "unet.fp32.onnx", outside)
    data = manifest_of(engine)
    data["files"][name] = data["files"].pop("unet.fp32.onnx")
    data["onnx"]["fp32"]["file"] = name
    reseal(engine, data)
    with pytest.raises(EngineFolderError, match="onnx.fp32.file|files key"):
        load(engine)


def test_a_symlink_out_of_the_folder_is_refused_even_with_the_right_content(engine):
    onnx_file = engine / "unet.fp32.onnx"
    outside = engine.parent / "elsewhere.onnx"
    shutil.move(onnx_file, outside)
    onnx_file.symlink_to(outside)  # same bytes, same checksum, but not in the folder
    with pytest.raises(EngineFolderError, match="outside the engine folder"):
        load(engine)


def test_a_symlink_to_a_system_file_discloses_nothing_about_it(engine):
    secret = Path("/etc/passwd")
    (engine / "unet.fp32.onnx.data").unlink()
    (engine / "unet.fp32.onnx.data").symlink_to(secret)
    with pytest.raises(EngineFolderError) as e:
        read_manifest(engine, verify=False)
    assert "outside the engine folder" in str(e.value)
    assert str(secret.stat().st_size) not in str(e.value) and str(secret) not in str(e.value)


def test_the_manifest_itself_as_a_symlink_out_is_refused(engine):
    outside = engine.parent / "manifest-elsewhere.json"
    shutil.move(engine / "manifest.json", outside)
    (engine / "manifest.json").symlink_to(outside)
    with pytest.raises(EngineFolderError, match="outside the engine folder"):
        load(engine)


def test_a_symlink_inside_the_folder_is_fine(engine):
    data = manifest_of(engine)
    (engine / "alias.onnx").symlink_to("unet.fp32.onnx")
    data["files"]["alias.onnx"] = data["files"]["unet.fp32.onnx"]
    reseal(engine, data)
    read_manifest(engine)


@pytest.mark.parametrize("reseal_it", [False, True], ids=["hand-edit", "resealed"])
@pytest.mark.parametrize("name", ["unet.fp32.onnx", "unet.fp32.onnx.data"])
def test_removing_a_files_entry_does_not_turn_off_its_check(engine, name, reseal_it):
    data = manifest_of(engine)
    del data["files"][name]
    (reseal if reseal_it else write_raw)(engine, data)
    target = engine / name
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # a flipped weight or graph byte
    target.write_bytes(bytes(raw))
    with pytest.raises(EngineFolderError, match="no checksum|changed after the build"):
        load(engine)


def test_an_in_place_edit_is_seen_by_a_second_load_in_the_same_process(engine):
    """Same size, mtime put back: the hash cache must not hide it."""
    load(engine)
    target = engine / "unet.fp32.onnx.data"
    st = target.stat()
    raw = bytearray(target.read_bytes())
    raw[1000] ^= 0x01
    time.sleep(0.05)  # past the clock tick of the copy
    target.write_bytes(bytes(raw))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(EngineFolderError, match="checksum"):
        load(engine)


def test_the_hash_cache_serves_unchanged_files_and_misses_edited_ones(engine, monkeypatch):
    import cmrt.engine.manifest as mf

    monkeypatch.setattr(mf, "RACY_SECONDS", 0.0)  # the copy is fresh: cache it anyway
    monkeypatch.setattr(mf, "_HASH_CACHE", {})
    monkeypatch.setattr(mf, "_blake3", lambda: None)  # count SHA-256 calls: the cache works the same for BLAKE3
    hashed = []
    real = mf.hashlib.sha256
    monkeypatch.setattr(mf.hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    read_manifest(engine)
    first = len(hashed)
    read_manifest(engine)
    assert first >= 2 and len(hashed) == first + 1  # only the manifest digest is computed again
    target = engine / "unet.fp32.onnx"
    st = target.stat()
    raw = bytearray(target.read_bytes())
    raw[-10] ^= 0x01
    time.sleep(0.05)
    target.write_bytes(bytes(raw))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(EngineFolderError, match="checksum"):
        read_manifest(engine)


# --- malformed manifests, resealed: the schema ------------------------------------------------
def _drop(path):
    def edit(d):
        *parents, last = _split(path)
        node = d
        for k in parents:
            node = node[int(k)] if isinstance(node, list) else node[k]
        del node[last]
    return edit


def _set(path, value):
    return lambda d: set_field(d, path, value)


SCHEMA_CASES = {
    # wrong types
    "sample_size-str": _set("unet.sample_size", "16"),
    "sample_size-float": _set("unet.sample_size", 16.0),
    "sample_size-bool": _set("unet.sample_size", True),
    "sigma_max-str": _set("scheduler.sigma_max", "80"),
    "classes-list": _set("unet.num_class_embeds", []),
    "files-list": _set("files", []),
    "file-bytes-str": _set("files.unet.fp32.onnx.bytes", "222583"),
    "onnx-null": _set("onnx", None),
    "onnx-fp32-str": _set("onnx.fp32", "unet.fp32.onnx"),
    "max_batch-bool": _set("build_options.max_batch", True),
    "scheduler-number": _set("scheduler", 3),
    "inputs-dict": _set("onnx.fp32.inputs", {}),
    "filters-dict": _set("onnx.fp32.winograd.filters", {"0": 1}),
    "filter-shape-short": _set("onnx.fp32.winograd.filters.0.shape", [32, 3]),
    "tensorrt-list": _set("tensorrt", [1]),
    "source-str": _set("source", "digits"),
    # out of range / huge
    "sample_size-huge": _set("unet.sample_size", 10**9),
    "sample_size-zero": _set("unet.sample_size", 0),
    "train-timesteps-huge": _set("scheduler.num_train_timesteps", 10**12),
    "train-timesteps-one": _set("scheduler.num_train_timesteps", 1),
    "max_batch-huge": _set("build_options.max_batch", 10**9),
    "batch-order": _set("build_options.min_batch", 8),
    "sigma_max-huge": _set("scheduler.sigma_max", 1e308),
    "sigma-order": _set("scheduler.sigma_min", 100.0),
    "sigma_data-negative": _set("scheduler.sigma_data", -0.5),
    "classes-huge": _set("unet.num_class_embeds", 10**15),
    "file-bytes-huge": _set("files.unet.fp32.onnx.bytes", 10**30),
    "filter-offset-huge": _set("onnx.fp32.winograd.filters.0.offset", 10**18),
    "filter-offset-negative": _set("onnx.fp32.winograd.filters.0.offset", -4),
    "filter-length-wrong": _set("onnx.fp32.winograd.filters.0.length", 4),
    "filter-dims-huge": _set("onnx.fp32.winograd.filters.0.shape", [10**6, 10**6, 3, 3]),
    "filter-tile-3": _set("onnx.fp32.winograd.filters.0.tile", 3),
    "filter-tile-8": _set("onnx.fp32.winograd.filters.0.tile", 8),
    "filter-tile-str": _set("onnx.fp32.winograd.filters.0.tile", "4"),
    "filter-chunks-short": lambda d: d["onnx"]["fp32"]["winograd"]["filters"][0].update(
        chunks=[[0, d["onnx"]["fp32"]["winograd"]["filters"][0]["shape"][0] - 1]]),
    "filter-chunks-gap": lambda d: d["onnx"]["fp32"]["winograd"]["filters"][0].update(
        chunks=[[0, 1], [2, d["onnx"]["fp32"]["winograd"]["filters"][0]["shape"][0]]]),
    "filter-chunks-empty-part": lambda d: d["onnx"]["fp32"]["winograd"]["filters"][0].update(
        chunks=[[0, 0], [0, d["onnx"]["fp32"]["winograd"]["filters"][0]["shape"][0]]]),
    "filter-chunks-not-pairs": _set("onnx.fp32.winograd.filters.0.chunks", [[0, 1, 2]]),
    "filter-chunks-none": _set("onnx.fp32.winograd.filters.0.chunks", []),
    "per-call-choice-unknown": _set("build_options.winograd_per_call", "f2"),
    "batching-chunk-zero": _set("onnx.fp32.batching.chunk", 0),
    "batching-chunk-str": _set("onnx.fp32.batching.chunk", "1"),
    "batching-chunk-huge": _set("onnx.fp32.batching.chunk", 10**9),
    "batching-graph-not-a-graph": _set("onnx.fp32.batching.graph", "unet.fp32.onnx.data"),
    "batching-graph-another-graph": lambda d: d["onnx"]["fp32"]["batching"].update(graph=d["onnx"]["fp32"]["winograd"]["file"]),
    "batching-of-a-dropped-winograd-graph": lambda d: d["onnx"]["fp32"]["winograd"].update(
        batching={"graph": d["onnx"]["fp32"]["winograd"]["file"], "chunk": 1}),
    "many-files": lambda d: d["files"].update({f"f{i}": {"sha256": "0" * 64, "bytes": 1} for i in range(100)}),
    "long-name": lambda d: d["files"].update({"a" * 300: {"sha256": "0" * 64, "bytes": 1}}),
    "sha-short": _set("files.unet.fp32.onnx.sha256", "abc"),
    # missing keys
    **{f"missing-{k}": _drop(k) for k in ("unet", "scheduler", "build_options", "onnx", "files", "tools", "source", "build_key")},
    "missing-sample_size": _drop("unet.sample_size"),
    "missing-sigma_min": _drop("scheduler.sigma_min"),
    "missing-onnx-file": _drop("onnx.fp32.file"),
    "missing-max_batch": _drop("build_options.max_batch"),
    "missing-filter-offset": _drop("onnx.fp32.winograd.filters.0.offset"),
    "missing-batching-chunk": _drop("onnx.fp32.batching.chunk"),
    "missing-files-sha": _drop("files.unet.fp32.onnx.sha256"),
    "no-graphs": _set("onnx", {}),
    # relations between fields
    "inputs-unconditional": lambda d: d["onnx"]["fp32"]["inputs"].pop(),
    "wrong-precision-key": lambda d: d["onnx"].update({"fp16": d["onnx"].pop("fp32")}),
    "io-dtype": _set("onnx.fp32.inputs.0.dtype", "float16"),
    "unlisted-graph": _set("onnx.fp32.file", "other.onnx"),
    "unlisted-winograd-graph": lambda d: (d["files"].pop(d["onnx"]["fp32"]["winograd"]["file"], None),
                                          d["onnx"]["fp32"]["winograd"].update(used=True)),
    "graph-is-the-weights": _set("onnx.fp32.file", "unet.fp32.onnx.data"),  # listed and checksummed, not a graph
    # consistent with each other, not with the graph: ONNX Runtime's session is checked against them
    "size-not-the-graphs": lambda d: (d["unet"].update(sample_size=32), d["onnx"]["fp32"]["inputs"][0].update(shape=["batch", 3, 32, 32]),
                                      d["onnx"]["fp32"]["outputs"][0].update(shape=["batch", 3, 32, 32])),
    "channels-not-the-graphs": lambda d: (d["unet"].update(in_channels=1, out_channels=1),
                                          d["onnx"]["fp32"]["inputs"][0].update(shape=["batch", 1, 16, 16]),
                                          d["onnx"]["fp32"]["outputs"][0].update(shape=["batch", 1, 16, 16])),
    "channels-in-out": lambda d: (d["unet"].update(out_channels=1), d["onnx"]["fp32"]["outputs"][0].update(shape=["batch", 1, 16, 16])),
    "tensorrt-unlisted": _set("tensorrt", {
        "format": 1, "file": "x.plan", "precision": "fp32", "tensorrt_version": "11.4", "onnx_sha256": None,
        "gpu": {"name": "g", "compute_capability": "9.0"}, "profile": {"min": 1, "opt": 4, "max": 8},
        "options": {"optimization_level": 3}, "validation": {"max_abs_error": 0.0, "tolerance": 0.05},
    }),
    "tensorrt-incomplete": _set("tensorrt", {"file": "unet.fp32.onnx"}),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_a_resealed_malformed_manifest_is_refused_naming_the_field(engine, case):
    data = manifest_of(engine)
    SCHEMA_CASES[case](data)
    reseal(engine, data)
    with pytest.raises(EngineFolderError, match="rebuild") as e:
        load(engine)
    assert isinstance(e.value, ValueError)


# Raw text that no JSON edit of a real manifest produces.
RAW_CASES = {
    "empty": b"",
    "garbage": b"\x00\xff\xfe binary",
    "not-utf8": b'{"format": "\xff"}',
    "list": b"[1, 2, 3]",
    "number": b"3",
    "string": b'"cmrt-engine"',
    "deep-nesting": b'{"format": "cmrt-engine", "format_version": 2, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "moderate-nesting": b'{"format": "cmrt-engine", "format_version": 2, "x": ' + b"[" * 500 + b"]" * 500 + b"}",
    "huge-int": b'{"format": "cmrt-engine", "format_version": 1' + b"0" * 5000 + b"}",
    "nan": b'{"format": "cmrt-engine", "format_version": 2, "x": NaN}',
    "infinity": b'{"format": "cmrt-engine", "format_version": 2, "x": -Infinity}',
    "duplicate-key": b'{"format": "cmrt-engine", "format_version": 2, "format_version": 2}',
    "format-version-str": b'{"format": "cmrt-engine", "format_version": "2"}',
    "format-version-list": b'{"format": "cmrt-engine", "format_version": [2]}',
    "huge-file": b'{"format": "cmrt-engine", "x": "' + b"a" * (5 << 20) + b'"}',
}


@pytest.mark.parametrize("case", sorted(RAW_CASES))
def test_malformed_manifest_text_is_refused(engine, case):
    (engine / "manifest.json").write_bytes(RAW_CASES[case])
    with pytest.raises(EngineFolderError):
        load(engine)


def test_a_resealed_manifest_with_an_infinite_value_in_a_read_field_is_refused(engine):
    """1e999 is valid JSON and parses as inf: the schema, not the parser, refuses it."""
    from cmrt.engine.manifest import DIGEST_KEY, manifest_digest

    data = manifest_of(engine)
    data["scheduler"]["sigma_data"] = float("inf")
    data[DIGEST_KEY] = manifest_digest(data)
    (engine / "manifest.json").write_text(json.dumps(data).replace("Infinity", "1e999"))
    with pytest.raises(EngineFolderError, match=r"scheduler\.sigma_data` must be finite"):
        load(engine)


def test_the_build_never_writes_a_manifest_it_would_refuse(engine):
    from cmrt.engine.manifest import write_manifest

    data = manifest_of(engine)
    data["scheduler"]["sigma_max"] = float("nan")
    with pytest.raises(EngineFolderError, match="sigma_max"):
        write_manifest(engine, data)
    data["scheduler"]["sigma_max"] = 80.0
    data["unet"]["sample_size"] = "16"
    with pytest.raises(EngineFolderError, match="sample_size"):
        write_manifest(engine, data)
    assert load(engine)  # and what was there is untouched


def test_the_error_names_the_field(engine):
    data = manifest_of(engine)
    data["scheduler"]["sigma_max"] = "80"
    reseal(engine, data)
    with pytest.raises(EngineFolderError, match=r"field `scheduler\.sigma_max` must be a number"):
        load(engine)
