"""The on-disk cache stays under its size limit by evicting the least recently used entries; a hit counts
as a use; what a run holds open stays readable when evicted; `transferkit cache` shows and clears it."""

import json
import os
import time

import numpy as np
import pytest
import torch

from conftest import make_folder
from transferkit import cache
from transferkit.cli import main
from transferkit.data import decode_images, load_image_data


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(root))
    monkeypatch.delenv("TRANSFERKIT_CACHE_MAX_GB", raising=False)
    return root


def _hex(name: str) -> str:  # a cache key is 32 hex digits, as the cache names its entries
    import hashlib

    return hashlib.md5(name.encode()).hexdigest()


def _entry(root, kind, name, nbytes, age_s):
    key = _hex(name)
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{key}.u8", folder / f"{key}.json"] if kind == "images" else [folder / f"{key}.safetensors"]
    t = time.time() - age_s
    for i, f in enumerate(files):
        f.write_bytes(b"x" * (nbytes if i == 0 else 10))
        os.utime(f, (t, t))
    return files


def test_eviction_removes_least_recently_used_first_and_spares_what_the_run_keeps(own_cache):
    _entry(own_cache, "images", "old", 1000, age_s=300)
    keep = _entry(own_cache, "images", "older_but_kept", 1000, age_s=400)
    _entry(own_cache, "features", "mid", 1000, age_s=200)
    _entry(own_cache, "images", "new", 1000, age_s=100)
    removed = cache.enforce_limit(keep=tuple(keep), limit=2100)
    assert [e.key for e in removed] == [_hex("old"), _hex("mid")]  # oldest first; the kept entry skipped although older
    left = {e.key for e in cache.entries()}
    assert left == {_hex("older_but_kept"), _hex("new")}
    assert sum(e.bytes for e in cache.entries()) <= 2100
    assert cache.enforce_limit(limit=None) == [] and len(cache.entries()) == 2  # 0 / no limit: nothing goes


def test_limit_from_environment(own_cache, monkeypatch):
    assert cache.max_bytes() == int(cache.DEFAULT_MAX_GB * 1e9)
    monkeypatch.setenv("TRANSFERKIT_CACHE_MAX_GB", "0.5")
    assert cache.max_bytes() == 500_000_000
    monkeypatch.setenv("TRANSFERKIT_CACHE_MAX_GB", "0")
    assert cache.max_bytes() is None
    for bad in ("lots", "-1"):
        monkeypatch.setenv("TRANSFERKIT_CACHE_MAX_GB", bad)
        with pytest.raises(cache.UserError, match="TRANSFERKIT_CACHE_MAX_GB"):
            cache.max_bytes()


def test_stale_temporaries_go_and_a_write_in_progress_stays(own_cache):
    folder = own_cache / "images"
    folder.mkdir(parents=True)
    # old; young, of a live writer (this test's parent); young, of a writer that is gone (SIGKILLed mid-decode)
    stale, young, orphan = folder / f".a.u8.tmp{os.getppid()}", folder / f".b.u8.tmp{os.getppid()}", folder / ".c.u8.tmp999999999"
    for f in (stale, young, orphan):
        f.write_bytes(b"x")
    t = time.time() - cache.STALE_TMP_S - 10
    os.utime(stale, (t, t))
    cache.enforce_limit(limit=None)
    assert not stale.exists() and young.exists() and not orphan.exists()
    assert cache.entries() == []  # temporaries are never entries
    young.unlink()  # (test_hostile looks for temporaries left anywhere under the session's folders)


def _sets(tmp_path):
    a = load_image_data(str(make_folder(tmp_path / "a", n=6, size=24, seed=1))).train
    b = load_image_data(str(make_folder(tmp_path / "b", n=6, size=24, seed=2))).train
    c = load_image_data(str(make_folder(tmp_path / "c", n=6, size=24, seed=3))).train
    return a, b, c


def test_decoded_images_are_evicted_by_use_and_what_is_mapped_stays_readable(own_cache, tmp_path, monkeypatch):
    a, b, c = _sets(tmp_path)
    newest = lambda: cache.entries()[-1].key  # noqa: E731
    xa, _, _ = decode_images(a, 16)
    ref_a, key_a = xa.clone(), newest()
    one = max(e.bytes for e in cache.entries())
    monkeypatch.setenv("TRANSFERKIT_CACHE_MAX_GB", str(2.5 * one / 1e9))  # room for two entries
    time.sleep(0.02)
    decode_images(b, 16)
    key_b = newest()
    time.sleep(0.02)
    xa2, _, _ = decode_images(a, 16)  # a hit: `a` becomes the most recently used
    assert [e.key for e in cache.entries()] == [key_b, key_a]
    time.sleep(0.02)
    xc, _, _ = decode_images(c, 16)  # over the limit: `b`, the least recently used, goes
    key_c = newest()
    es = cache.entries()
    assert [e.key for e in es] == [key_a, key_c] and sum(e.bytes for e in es) <= 2.5 * one
    monkeypatch.setenv("TRANSFERKIT_CACHE_MAX_GB", str(1.2 * one / 1e9))  # room for one: `a` goes while mapped
    decode_images(c, 16)  # a hit enforces a lowered limit too
    assert [e.key for e in cache.entries()] == [key_c]
    torch.testing.assert_close(xa2, ref_a)  # the mapping outlives its file
    xa3, _, _ = decode_images(a, 16)  # rebuilt, identical
    torch.testing.assert_close(xa3, ref_a)
    assert not np.shares_memory(xa3.numpy(), xc.numpy())


def test_cache_command_shows_and_clears(own_cache, tmp_path, capsys):
    a, _, _ = _sets(tmp_path)
    decode_images(a, 16)
    _entry(own_cache, "features", "f1", 500, age_s=10 * 86400)
    assert main(["cache", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kinds"]["images"]["entries"] == 1 and info["kinds"]["features"] == {"entries": 1, "bytes": 500}
    assert main(["cache", "--clear", "features", "--older-than-days", "20"]) == 0  # f1 is 10 days old: stays
    assert "removed 0 entries" in capsys.readouterr().out
    assert main(["cache", "--clear", "features", "--older-than-days", "5"]) == 0
    assert "removed 1 entry (500 B)" in capsys.readouterr().out
    assert [e.kind for e in cache.entries()] == ["images"]
    # a file of the user's in the cache folder is no entry: neither counted nor removed (QA AM: --clear removed a photo)
    (own_cache / "images" / "ant.jpg").write_bytes(b"mine")
    (own_cache / "features" / "notes.json").write_text("{}")
    assert [e.kind for e in cache.entries()] == ["images"] and [e.kind for e in cache.enforce_limit(limit=0)] == ["images"]
    assert main(["cache", "--clear", "all"]) == 0 and cache.entries() == []
    assert (own_cache / "images" / "ant.jpg").read_bytes() == b"mine" and (own_cache / "features" / "notes.json").is_file()
    assert main(["cache"]) == 0 and "0 entries" in capsys.readouterr().out
    assert main(["cache", "--older-than-days", "3"]) == 2
    assert "--older-than-days goes with --clear" in capsys.readouterr().err


def test_a_cache_folder_that_is_a_file_is_named(tmp_path, monkeypatch, capsys):
    """TRANSFERKIT_CACHE_DIR naming a file: a clear message and exit 2, from `cache` and from `fit`
    (whose feature cache raised NotADirectoryError after the images were decoded)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(afile))
    d = make_folder(tmp_path / "d", n=3)
    for argv in (["cache"], ["fit", "--data", str(d), "--model", "small_convnet", "--strategy", "linear_probe", "--out", str(tmp_path / "r")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"the cache folder {afile} is a file (TRANSFERKIT_CACHE_DIR)" in err and "Traceback" not in err


def test_the_cache_command_says_what_each_entry_holds(own_cache, tmp_path, capsys, tiny_ckpt):
    """`transferkit cache` gave counts and sizes by kind only: which entry was which data or model
    could not be told, so nothing could be cleared but all of it."""
    from transferkit.backbones import create_backbone
    from transferkit.features import cached_features

    a, _, _ = _sets(tmp_path)
    decode_images(a, 16)
    bb = create_backbone(f"file:{tiny_ckpt}", arch="cifar_resnet20")
    cached_features(bb, torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8), 16)
    _entry(own_cache, "features", "older", 500, age_s=3 * 86400)  # an entry written before entries said what they hold
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"{len(a)} images at 16 px, of {os.path.commonpath([str(p) for p in a.sources])}" in out
    assert f"features of 5 images, file:{tiny_ckpt} at 16 px" in out and "contents not recorded" in out
    assert main(["cache", "--json"]) == 0
    holds = {e["kind"] + ":" + e["holds"].split(",")[0] for e in json.loads(capsys.readouterr().out)["entries"]}
    assert holds == {"features:", "features:features of 5 images", f"images:{len(a)} images at 16 px"}


def test_a_decoded_entry_overwritten_in_place_is_decoded_again(own_cache, tmp_path):
    """QA C: zeros written over a cached entry, its size unchanged, were trusted: a fit trained on black
    images and cached their features. The entry's CRC-32 is checked on every hit; JSON of another shape
    is a damaged entry, not a traceback."""
    import transferkit.data as data_mod

    (a, _, _) = _sets(tmp_path)
    ref = decode_images(a, 16)[0].clone()  # (a copy: the tensor maps the file)
    (u8,) = (own_cache / "images").glob("*.u8")
    meta = u8.with_suffix(".json")
    u8.write_bytes(bytes(u8.stat().st_size))
    data_mod._VERIFIED.clear()  # as a later run finds it (a process checks an entry once while its file stays as it was)
    again, _, _ = decode_images(a, 16)
    torch.testing.assert_close(again, ref)
    assert u8.read_bytes() != bytes(u8.stat().st_size)  # rebuilt on disk too
    data_mod._VERIFIED.clear()
    meta.write_text("[1, 2]")
    torch.testing.assert_close(decode_images(a, 16)[0], ref)
    assert json.loads(meta.read_text())["crc32"] > 0


def test_the_cache_command_counts_and_clears_what_killed_runs_left(own_cache, capsys):
    folder = own_cache / "images"
    folder.mkdir(parents=True)
    (folder / ".c.u8.tmp999999999").write_bytes(b"x" * 3000)
    assert main(["cache"]) == 0
    assert "and 1 temporary file (3.0 KB) left by runs that were killed" in " ".join(capsys.readouterr().out.split())
    assert main(["cache", "--clear", "all"]) == 0
    assert "and 1 temporary file of runs that were killed" in capsys.readouterr().out
    assert not list(folder.iterdir())


def test_a_process_checks_a_cache_entry_s_crc_once_while_its_file_is_unchanged(own_cache, tmp_path, monkeypatch):
    """Every fold of every search trial hit its entries again, each time a CRC-32 of the whole file
    (1.2 s for 3 GB): checked once a process, while the file's inode, size and time stay."""
    import transferkit.data as data_mod

    (a, _, _) = _sets(tmp_path)
    decode_images(a, 16)  # written: known good
    calls = []
    real = data_mod._crc32
    monkeypatch.setattr(data_mod, "_crc32", lambda x: calls.append(1) or real(x))
    decode_images(a, 16)
    decode_images(a, 16)
    assert calls == []
    data_mod._VERIFIED.clear()  # another process
    decode_images(a, 16)
    assert calls == [1]
