"""The record of verified files (cmrt/engine/verified.py): what lets a new process skip hashing, and what it must never do.

It may spare a process from reading a file only when the file's stat identity (device, inode,
size, mtime, ctime) is the one it had when it was hashed. Every test that changes a file checks
the change is still refused in a new process, or with the record corrupted or forged.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cmrt.engine.manifest as mf
from cmrt.engine.errors import EngineFolderError
from cmrt.engine.manifest import read_manifest, start_verification
from cmrt.engine.verified import VerifiedRecord, record_dir

REPO = Path(__file__).resolve().parents[2]

# Run in a new process: verify FOLDER and print what was read, or the error.
VERIFY = """
import json, sys
from cmrt.engine.errors import EngineFolderError
from cmrt.engine.manifest import read_manifest, start_verification
v = start_verification(read_manifest(sys.argv[1], verify=False))
try:
    v.join()
    print(json.dumps({"ok": True, "hashed_bytes": v.hashed_bytes}))
except EngineFolderError as e:
    print(json.dumps({"ok": False, "error": str(e), "hashed_bytes": v.hashed_bytes}))
"""

# Run in a new process: what users run, `cmrt.load`.
LOAD = """
import sys
import cmrt
from cmrt.engine.errors import EngineFolderError
try:
    cmrt.load(sys.argv[1], backend="onnxruntime", device="cpu")
    print("loaded")
except EngineFolderError as e:
    print("refused:", e)
"""


def in_new_process(code: str, folder: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def verify_in_new_process(folder: Path) -> dict:
    return json.loads(in_new_process(VERIFY, folder))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache root of the test's own (inherited by the new processes)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CMRT_CACHE", str(root))
    return root


@pytest.fixture
def not_racy(monkeypatch):
    """Files just copied count as settled: records are written without waiting RACY_SECONDS."""
    monkeypatch.setattr(mf, "RACY_SECONDS", 0.0)


@pytest.fixture
def engine(small_models, tmp_path) -> Path:
    folder = tmp_path / "engine"
    shutil.copytree(small_models["cond"][1], folder)
    return folder


def edit_in_place(path: Path, offset: int = 1000) -> None:
    """Flip one byte, keeping the size and putting the mtime back: only the ctime tells."""
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    time.sleep(0.05)  # past the clock tick of the copy
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def record_file(folder: Path) -> Path:
    return VerifiedRecord(folder).path


def test_a_build_seeds_the_record_so_that_the_first_load_reads_nothing(tmp_path, cache, not_racy):
    pytest.importorskip("torch")
    from cmrt.build.folder import build_engine_folder
    from cmrt.engine.options import BuildOptions

    from tests.models import save_small_model

    model = save_small_model(tmp_path / "model", conditional=True, shift="scale_shift", sample_size=32)
    engine = build_engine_folder(str(model), out=tmp_path / "engine",
                                 options=BuildOptions(precisions=("fp32",), max_batch=4, winograd="always"))
    files = read_manifest(engine, verify=False).files
    assert any(name.endswith(".winograd.filters") for name in files)
    assert set(json.loads(record_file(engine).read_text())["files"]) == set(files)
    got = verify_in_new_process(engine)
    print(got)
    assert got == {"ok": True, "hashed_bytes": 0}


def test_files_changed_just_before_their_hash_are_not_recorded(engine, cache):
    read_manifest(engine)  # the copy is fresh: every file is within RACY_SECONDS of its change
    assert not record_file(engine).exists()
    assert verify_in_new_process(engine)["hashed_bytes"] == sum(r["bytes"] for r in read_manifest(engine, verify=False).files.values())


def test_a_new_process_reads_only_what_changed_and_refuses_an_edit_that_restores_size_and_mtime(engine, cache, not_racy):
    read_manifest(engine)  # verified whole: the record is written
    assert verify_in_new_process(engine) == {"ok": True, "hashed_bytes": 0}
    target = engine / "unet.fp32.onnx.data"
    edit_in_place(target)
    got = verify_in_new_process(engine)
    print(got)
    assert not got["ok"] and "unet.fp32.onnx.data does not match its checksum" in got["error"]
    assert got["hashed_bytes"] == target.stat().st_size  # the unchanged files were not read
    loaded = in_new_process(LOAD, engine)
    print(loaded)
    assert loaded.startswith("refused:") and "does not match its checksum" in loaded


def test_a_moved_folder_is_hashed_again(engine, cache, not_racy, tmp_path):
    read_manifest(engine)
    moved = tmp_path / "moved"
    os.rename(engine, moved)  # same files, same identities, another real path: another record
    assert verify_in_new_process(moved)["hashed_bytes"] > 0


def _forgeries(engine: Path, target: str) -> dict:
    """Record files that a damaged disk, a crafted file or a stale copy could leave, each after
    `target` was edited in place. None of them may make the edited file pass."""
    path = record_file(engine)
    good = json.loads(path.read_text())
    now = list(mf.identity(os.stat(engine / target)))
    files = read_manifest(engine, verify=False).files
    other = next(n for n in files if n != target)

    def entry(**kw):
        data = json.loads(json.dumps(good))
        data["files"][target] = {**data["files"][target], **kw}
        return json.dumps(data).encode()

    return {
        "garbage": os.urandom(4096),
        "empty": b"",
        "a-list": b"[1, 2, 3]",
        "not-utf8": b"\xff\xfe" + b"{}" * 10,
        "wrong-format": json.dumps({**good, "format": 99}).encode(),
        "another-folder": json.dumps({**good, "folder": "/elsewhere"}).encode(),
        "identity-as-strings": entry(identity=[str(v) for v in now]),
        "identity-as-bools": entry(identity=[True] * 5),
        "identity-too-short": entry(identity=now[:4]),
        "identity-negative": entry(identity=[-v for v in now]),
        "digest-not-hex": entry(sha256="z" * 64, blake3="z" * 64),
        "stale-identity": entry(),  # the record from before the edit, untouched
        "current-identity-digest-of-another-file": entry(identity=now, **{
            k: v for k, v in files[other].items() if k in ("sha256", "blake3")}),
        "current-identity-digest-of-the-edit": entry(identity=now, **mf.file_digests(engine / target)),
        "current-identity-sha256-under-blake3": entry(identity=now, blake3=files[target]["sha256"], sha256="0" * 64),
        "huge": b" " * (2 << 20) + json.dumps(good).encode(),
    }


FORGERIES = ["garbage", "empty", "a-list", "not-utf8", "wrong-format", "another-folder", "identity-as-strings",
             "identity-as-bools", "identity-too-short", "identity-negative", "digest-not-hex", "stale-identity",
             "current-identity-digest-of-another-file", "current-identity-digest-of-the-edit",
             "current-identity-sha256-under-blake3", "huge"]


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_corrupt_or_forged_record_never_lets_a_changed_file_pass(engine, cache, not_racy, forgery):
    read_manifest(engine)
    target = "unet.fp32.onnx.data"
    edit_in_place(engine / target)
    record_file(engine).write_bytes(_forgeries(engine, target)[forgery])
    with pytest.raises(EngineFolderError, match="does not match its checksum"):
        read_manifest(engine)
    got = verify_in_new_process(engine)
    assert not got["ok"] and target in got["error"]


@pytest.mark.parametrize("forgery", ["garbage", "a-list", "identity-as-strings", "huge"])
def test_an_unusable_record_only_costs_the_hashing(engine, cache, not_racy, forgery):
    read_manifest(engine)
    record_file(engine).write_bytes(_forgeries(engine, "unet.fp32.onnx.data")[forgery])
    v = start_verification(read_manifest(engine, verify=False))
    v.join()
    assert v.hashed_bytes > 0
    assert verify_in_new_process(engine) == {"ok": True, "hashed_bytes": 0}  # rewritten by the verification that passed


def test_a_fifo_or_a_folder_at_the_records_name_is_ignored(engine, cache, not_racy):
    path = record_file(engine)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)  # opening it for reading would block without O_NONBLOCK
    assert VerifiedRecord(engine).entries == {}
    read_manifest(engine)
    path.unlink()
    path.mkdir()
    assert VerifiedRecord(engine).entries == {}
    read_manifest(engine)  # the record cannot be written there: logged, and the load goes on


def test_records_of_removed_folders_are_pruned(engine, cache, not_racy, tmp_path):
    gone = tmp_path / "gone"
    shutil.copytree(engine, gone)
    read_manifest(gone)
    stale = record_file(gone)
    assert stale.exists()
    shutil.rmtree(gone)
    read_manifest(engine)  # writing a record prunes those of folders that no longer exist
    assert record_file(engine).exists() and not stale.exists()
    assert sorted(p.name for p in record_dir().iterdir()) == [record_file(engine).name]
