"""The load sequence: stored Winograd filters, background verification, ONNX Runtime's graph cache.

Each check is about what a load may trust: a changed folder file is refused before any image
whether or not ONNX Runtime reads it (with a cached graph it reads none of the weights), a
corrupt cache entry is rebuilt, and folders built before the filters were stored still load.
"""
import json
import shutil

import numpy as np
import pytest

import cmrt
from cmrt.engine.manifest import EngineFolderError, read_manifest, write_manifest

KW = dict(batch_size=2, class_labels=[1, 7], num_inference_steps=2, seed=5, output_type="np")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("CMRT_CACHE", str(root))
    return root / "onnxruntime"


def _winograd_build(tmp_path_factory, **options):
    pytest.importorskip("torch")
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions

    from tests.models import save_small_model

    root = tmp_path_factory.mktemp("cold")
    model = save_small_model(root / "model", conditional=True, shift="scale_shift", sample_size=32)
    return build_engine_folder(str(model), out=root / "engine",
                               options=BuildOptions(precisions=("fp32",), max_batch=4, winograd="always", **options))


@pytest.fixture(scope="module")
def winograd_folder(tmp_path_factory):
    """A built folder whose CPU graph is the Winograd one, with stored filters."""
    return _winograd_build(tmp_path_factory, winograd_per_call="none")


@pytest.fixture(scope="module")
def per_call_folder(tmp_path_factory):
    """The same, built with the default options: the graph transforms every filter per call,
    reading the 3x3 weights from the weight file at each call."""
    return _winograd_build(tmp_path_factory)


def copy_of(folder, tmp_path):
    out = tmp_path / "engine"
    shutil.copytree(folder, out)
    return out


def flip_middle_byte(path):
    with open(path, "r+b") as f:
        middle = path.stat().st_size // 2
        f.seek(middle)
        byte = f.read(1)
        f.seek(middle)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_stored_filters_are_mapped_and_match_the_transform(winograd_folder):
    from cmrt.engine.winograd_filters import FILTER_ALIGN, filters_from_weight_file, mapped_filters

    m = read_manifest(winograd_folder)
    rec = m.winograd
    assert rec["filters_file"] in m.files  # checksummed like every file
    mapped = mapped_filters(m.folder, rec)
    computed = filters_from_weight_file(m.folder, rec)
    assert set(mapped) == set(computed) == {f["input"] for f in rec["filters"]}
    tiles = {f["input"]: f["tile"] for f in rec["filters"]}
    assert set(tiles.values()) == {4, 2}  # the 32x32 maps get F(4x4) tiles, the 16x16 ones F(2x2)
    for name, u in mapped.items():
        assert isinstance(u.base, np.memmap) and not u.flags.writeable  # a view into the file, not a copy
        assert u.shape[0] == (tiles[name] + 2) ** 2
        np.testing.assert_array_equal(u, computed[name])
    assert all(f["u_offset"] % FILTER_ALIGN == 0 for f in rec["filters"])


def test_a_flipped_byte_in_the_weight_file_is_refused_before_the_first_image(winograd_folder, tmp_path, cache):
    engine = copy_of(winograd_folder, tmp_path)
    first = cmrt.load(engine, device="cpu")
    assert first.backend.cache == "written"
    weights = engine / read_manifest(engine).data["onnx"]["fp32"]["external_data"]
    flip_middle_byte(weights)
    # The cached optimized graph reads none of the folder's weights; the folder is verified anyway.
    with pytest.raises(EngineFolderError, match="does not match its checksum") as e:
        cmrt.load(engine, device="cpu")
    print(e.value)
    assert weights.name in str(e.value)


def test_a_flipped_byte_in_the_weight_file_that_the_graph_reads_per_call_is_refused(per_call_folder, tmp_path, cache):
    engine = copy_of(per_call_folder, tmp_path)
    rec = read_manifest(engine).winograd
    assert rec["filters"] and all("chunks" in f for f in rec["filters"])  # no filter stored: U made per call
    assert cmrt.load(engine, device="cpu").backend.cache == "written"
    flip_middle_byte(engine / rec["weights_file"])
    with pytest.raises(EngineFolderError, match="does not match its checksum") as e:
        cmrt.load(engine, device="cpu")
    assert rec["weights_file"] in str(e.value)


def test_a_flipped_byte_in_the_stored_filters_is_refused(winograd_folder, tmp_path, cache):
    engine = copy_of(winograd_folder, tmp_path)
    flip_middle_byte(engine / read_manifest(engine).winograd["filters_file"])
    with pytest.raises(EngineFolderError, match="does not match its checksum"):
        cmrt.load(engine, device="cpu")


def test_the_graph_cache_is_used_checked_and_rebuilt_when_corrupt(winograd_folder, tmp_path, cache):
    from cmrt.runtime.backends import ort_graph_cache

    engine = copy_of(winograd_folder, tmp_path)
    fresh = cmrt.load(engine, device="cpu")
    want = fresh(**KW).images
    (entry,) = list(cache.iterdir())
    assert json.loads((entry / ort_graph_cache.RECORD_NAME).read_text())["files"].keys() == {
        ort_graph_cache.GRAPH_NAME, ort_graph_cache.DATA_NAME}
    hit = cmrt.load(engine, device="cpu")
    assert hit.backend.cache == "hit" and set(hit.load_seconds) >= {"manifest", "weights", "session", "verification_wait"}
    np.testing.assert_array_equal(hit(**KW).images, want)
    flip_middle_byte(entry / ort_graph_cache.DATA_NAME)  # same size: only the hash can tell
    rebuilt = cmrt.load(engine, device="cpu")
    assert rebuilt.backend.cache == "off" and not entry.exists()
    np.testing.assert_array_equal(rebuilt(**KW).images, want)
    again = cmrt.load(engine, device="cpu")
    assert again.backend.cache == "written"


def test_the_cache_key_changes_with_the_graph_the_runtime_and_the_options(monkeypatch):
    from cmrt.runtime.backends import ort_graph_cache

    base = ort_graph_cache.cache_key("graph-a", {"threads": 2})
    assert ort_graph_cache.cache_key("graph-b", {"threads": 2}) != base
    assert ort_graph_cache.cache_key("graph-a", {"threads": 1}) != base
    monkeypatch.setattr(ort_graph_cache, "cpu_features", lambda: "x86_64:avx2")
    assert ort_graph_cache.cache_key("graph-a", {"threads": 2}) != base
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "0.0.0")
    assert ort_graph_cache.cache_key("graph-a", {"threads": 2}) != base


def test_a_folder_built_before_filters_were_stored_still_loads(winograd_folder, tmp_path, cache):
    engine = copy_of(winograd_folder, tmp_path)
    want = cmrt.load(engine, device="cpu")(**KW).images
    manifest = json.loads((engine / "manifest.json").read_text())
    rec = manifest["onnx"]["fp32"]["winograd"]
    (engine / rec.pop("filters_file")).unlink()
    for f in rec["filters"]:
        del f["u_offset"]
    del manifest["files"]["unet.fp32.winograd.filters"]
    write_manifest(engine, manifest)  # sealed as the build that made such folders would have
    old = cmrt.load(engine, device="cpu")
    assert old.backend.cache == "hit"  # same graph and weights: the same cache entry
    np.testing.assert_array_equal(old(**KW).images, want)


def test_records_carry_blake3_and_without_the_package_sha256_is_checked(winograd_folder, tmp_path, cache, monkeypatch):
    pytest.importorskip("blake3")
    from cmrt.engine import manifest as manifest_module

    assert all(len(rec["blake3"]) == 64 and len(rec["sha256"]) == 64 for rec in read_manifest(winograd_folder).files.values())
    monkeypatch.setattr(manifest_module, "_blake3", lambda: None)  # a machine without the package
    engine = copy_of(winograd_folder, tmp_path)
    cmrt.load(engine, device="cpu")
    flip_middle_byte(engine / "unet.fp32.onnx.data")
    with pytest.raises(EngineFolderError, match="does not match its checksum"):
        cmrt.load(engine, device="cpu")


def test_a_verified_graph_cache_entry_is_not_read_again_but_an_in_place_edit_is_caught(winograd_folder, tmp_path, cache,
                                                                                      monkeypatch):
    import os

    from cmrt.engine import manifest as manifest_module
    from cmrt.runtime.backends import ort_graph_cache

    monkeypatch.setattr(manifest_module, "RACY_SECONDS", 0.0)  # the entry is fresh: record it anyway
    engine = copy_of(winograd_folder, tmp_path)
    want = cmrt.load(engine, device="cpu")(**KW).images  # writes the entry
    (entry,) = list(cache.iterdir())
    assert cmrt.load(engine, device="cpu").backend.cache == "hit"  # verifies the entry whole, and records it
    again = ort_graph_cache.find(entry.name)
    assert again.check() and again.verification.hashed_bytes == 0
    data = entry / ort_graph_cache.DATA_NAME
    st = data.stat()
    flip_middle_byte(data)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the ctime tells
    rebuilt = cmrt.load(engine, device="cpu")
    assert rebuilt.backend.cache == "off" and not entry.exists()
    np.testing.assert_array_equal(rebuilt(**KW).images, want)


def test_the_graph_cache_key_says_which_file_is_the_graph_and_counts_unlisted_files(winograd_folder):
    """Two different graphs never share a cache entry: not a manifest naming its weight file as
    the graph, nor one whose graph is missing from `files` (which the schema refuses anyway)."""
    from cmrt.runtime.loading import graph_id

    m = read_manifest(winograd_folder)
    plain, weights = m.onnx_path("fp32"), winograd_folder / m.data["onnx"]["fp32"]["external_data"]
    unlisted = type(m)(m.folder, {**m.data, "files": {k: v for k, v in m.files.items() if k != plain.name}})
    ids = {graph_id(m, plain), graph_id(m, weights), graph_id(unlisted, plain), graph_id(m, m.cpu_graph("fp32")[0])}
    assert len(ids) == 4
    assert graph_id(m, plain) == graph_id(read_manifest(winograd_folder), plain)  # and it is stable
