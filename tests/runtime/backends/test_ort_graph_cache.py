"""The ONNX Runtime graph cache is kept to a size: least recently used entries go first."""
import json
import logging
import os

import pytest

from cmrt.runtime.backends import ort_graph_cache as cache


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRT_CACHE", str(tmp_path))
    return tmp_path / "onnxruntime"


def entry(root, n: int, mib: int, used_at: float):
    """A complete-looking entry of `mib` MiB, last used at `used_at`."""
    folder = root / f"{n:032x}"
    folder.mkdir(parents=True)
    (folder / cache.GRAPH_NAME).write_bytes(b"g")
    with open(folder / cache.DATA_NAME, "wb") as f:
        f.truncate(mib << 20)
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": "0" * 64} for name in (cache.GRAPH_NAME, cache.DATA_NAME)}
    (folder / cache.RECORD_NAME).write_text(json.dumps({"format": cache.CACHE_FORMAT, "key": folder.name, "files": files}))
    os.utime(folder / cache.RECORD_NAME, (used_at, used_at))
    return folder


def test_the_least_recently_used_entries_go_until_the_rest_fit(root, monkeypatch):
    monkeypatch.setenv(cache.MAX_GB_ENV, str(25 * 2**20 / 1e9))  # room for 25 MiB
    old, mid, new = entry(root, 1, 10, 1000), entry(root, 2, 10, 2000), entry(root, 3, 10, 3000)
    stray = root / ".tmp-staging"  # not an entry: never touched
    stray.mkdir()
    just_written = entry(root, 4, 10, 500)  # the oldest mtime, but it is the one being kept
    assert cache.prune(keep=just_written) == [mid, old]
    assert {p.name for p in root.iterdir()} == {new.name, just_written.name, stray.name}


def test_a_small_old_entry_goes_before_a_big_newer_one(root, monkeypatch):
    """Least recently used first: an older entry is never kept in place of a newer one that did not fit."""
    monkeypatch.setenv(cache.MAX_GB_ENV, str(25 * 2**20 / 1e9))
    small_old, big_newer = entry(root, 1, 2, 1000), entry(root, 2, 20, 2000)
    written = entry(root, 3, 10, 3000)
    assert cache.prune(keep=written) == [big_newer, small_old]


def test_a_hit_marks_the_entry_used_so_that_it_outlives_newer_ones(root, monkeypatch):
    monkeypatch.setenv(cache.MAX_GB_ENV, str(15 * 2**20 / 1e9))
    hit, newer = entry(root, 1, 10, 1000), entry(root, 2, 10, 2000)
    found = cache.find(hit.name)
    assert found is not None and found.folder == hit
    written = entry(root, 3, 1, 3000)
    assert cache.prune(keep=written) == [newer]


def test_an_unreadable_budget_is_reported_and_the_default_used(root, monkeypatch, caplog):
    for bad in ("lots", "-1", "inf"):
        monkeypatch.setenv(cache.MAX_GB_ENV, bad)
        with caplog.at_level(logging.WARNING):
            assert cache.max_cache_bytes() == int(cache.DEFAULT_MAX_GB * 1e9)
        assert f"{cache.MAX_GB_ENV} must be a number of GB >= 0, got {bad!r}" in caplog.text
    monkeypatch.setenv(cache.MAX_GB_ENV, "0")
    only = entry(root, 1, 1, 1000)
    assert cache.prune(keep=only) == [] and only.exists()  # a budget of 0 keeps just the entry in use


def test_a_missing_cache_folder_prunes_nothing(root):
    assert not root.exists() and cache.prune(keep=root / ("0" * 32)) == []
