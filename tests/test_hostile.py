"""Hostile input and hostile machines: decompression bombs, labels that look like paths, UTF-16 CSVs,
a full disk while checkpointing, and the memory-mapped decoded-image cache."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import make_folder, tiny_args
from transferkit.cli import main
from transferkit.errors import UserError


def _fit(args, capsys):
    rc = main(["fit", *args])
    return rc, capsys.readouterr().err


# ------------------------------------------------------------------------------ decoded-image cache


def test_decoded_cache_is_memory_mapped_equal_and_reused(tmp_path, monkeypatch):
    from transferkit import data
    from transferkit.data import _decode_in_memory, _read_folder, decode_images

    s = _read_folder(make_folder(tmp_path / "d", n=5))
    x, kept, bad = decode_images(s, 24)
    ref, _ = _decode_in_memory(s, 24, "bicubic", None)
    assert torch.equal(x, torch.from_numpy(ref)) and not bad and len(kept) == len(s)
    files = {str(f) for f in (Path(os.environ["TRANSFERKIT_CACHE_DIR"]) / "images").glob("*.u8")}
    assert files, "no cache file written"
    # the tensor's memory is a mapping of the cache file (Linux /proc/self/maps), not a heap copy
    addr = x.data_ptr()
    mapped = [ln for ln in Path("/proc/self/maps").read_text().splitlines() if ln.split()[-1] in files]
    assert any(int(ln.split()[0].split("-")[0], 16) <= addr < int(ln.split()[0].split("-")[1], 16) for ln in mapped)
    monkeypatch.setattr(data, "_decode_one", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    y, _, _ = decode_images(s, 24)  # a second run decodes nothing
    assert torch.equal(x, y)
    y[0, 0, 0, 0] = 255 - int(y[0, 0, 0, 0])  # copy-on-write: the cache file never changes
    z, _, _ = decode_images(s, 24)
    assert torch.equal(z, x)


def test_decoded_cache_on_a_full_disk_falls_back_to_memory(tmp_path, monkeypatch):
    from transferkit.data import _read_folder, decode_images

    s = _read_folder(make_folder(tmp_path / "d", n=3))

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.warns(UserWarning, match="No space left on device"):
        x, _, _ = decode_images(s, 16)
    assert x.shape == (6, 3, 16, 16)
    leftovers = [p for p in (tmp_path.parent).rglob(".*.tmp*")]
    assert not leftovers


# ------------------------------------------------------------------------------------ full disk


def test_full_disk_while_checkpointing_keeps_the_previous_one(tmp_path, monkeypatch):
    from transferkit.checkpoint import Checkpointer

    ck = Checkpointer(tmp_path / "run" / "checkpoints")
    ck.save({"step": torch.tensor(1)}, "0001")
    ck.save({"step": torch.tensor(2)}, "0002")
    real = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=r"No space left on device; the disk is full\); the previous checkpoint \(ckpt-0002.pt\) is intact.*--resume"):
        ck.save({"step": torch.tensor(3)}, "0003")
    monkeypatch.setattr(os, "fsync", real)
    assert int(ck.load_latest()["step"]) == 2
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp*")), "a half-written temporary file was left behind"


def test_a_damaged_index_or_an_unloadable_checkpoint_falls_back_to_an_intact_one(tmp_path):
    """A garbled checkpoints.json made --resume start over beside intact checkpoints; a checkpoint
    whose sha256 matches but that weights_only refuses raised an UnpicklingError traceback."""
    import hashlib
    import json
    import subprocess
    import sys

    from transferkit.checkpoint import Checkpointer

    folder = tmp_path / "run" / "checkpoints"
    ck = Checkpointer(folder)
    ck.save({"step": torch.tensor(1)}, "0001")
    ck.save({"step": torch.tensor(2)}, "0002")
    index = (folder / "checkpoints.json").read_text()
    (folder / "checkpoints.json").write_text("garbage{")
    said = []
    assert int(ck.load_latest(said.append)["step"]) == 2 and "is damaged: trying the checkpoint files themselves" in said[0]
    (folder / "checkpoints.json").write_text(index)
    # the newest replaced by a pickle of an object, with the index rewritten to match it: never unpickled, the previous one is used
    code = f"import torch\nclass Foo: pass\ntorch.save({{'x': Foo()}}, {str(folder / 'ckpt-0002.pt')!r})\n"
    subprocess.run([sys.executable, "-c", code], check=True)
    entries = json.loads(index)
    entries["checkpoints"][-1]["sha256"] = hashlib.sha256((folder / "ckpt-0002.pt").read_bytes()).hexdigest()
    (folder / "checkpoints.json").write_text(json.dumps(entries))
    said = []
    assert int(ck.load_latest(said.append)["step"]) == 1 and "ckpt-0002.pt cannot be loaded (UnpicklingError)" in said[0]


def test_full_disk_in_a_fit_then_resume_finishes(tmp_path, capsys, monkeypatch, tiny_ckpt):
    d = make_folder(tmp_path / "d", n=6)
    out = tmp_path / "run"
    args = ["--data", str(d), *tiny_args(tiny_ckpt), "--strategy", "full", "--epochs", "4", "--out", str(out)]
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):  # the disk fills up after a few files
        calls["n"] += 1
        if calls["n"] > 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rc, err = _fit(args, capsys)
    assert rc == 2 and "the disk is full" in err and "--resume" in err and "Traceback" not in err
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(os, "fsync", real)
    rc, err = main(["fit", "--resume", str(out)]), capsys.readouterr().err
    assert rc == 0, err
    assert (out / "manifest.json").exists()


# ------------------------------------------------------------------------------- hostile input


def test_decompression_bomb_is_refused_by_name(tmp_path, capsys, tiny_ckpt):
    d = make_folder(tmp_path / "d", n=4)
    Image.new("1", (30_000, 30_000)).save(d / "red" / "bomb.png")  # 900 Mpixel, 100 KB on disk
    rc, err = _fit(["--data", str(d), *tiny_args(tiny_ckpt), "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "bomb.png" in err and "DecompressionBombError" in err and "Traceback" not in err
    rc, err = _fit(["--data", str(d), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "2", "--skip-bad-images", "--out", str(tmp_path / "ok")], capsys)
    assert rc == 0, err


def test_labels_that_look_like_paths_stay_labels(tmp_path, capsys, tiny_ckpt):
    d = make_folder(tmp_path / "d", n=4)
    labels = ["../../evil", 'a, "quoted"\nlabel', "ünïcødé ✓"]
    rows = ["path,label"]
    files = sorted(d.rglob("*.png"))
    for i, f in enumerate(files):
        lab = labels[i % 3]
        rows.append(f'{f},"{lab.replace(chr(34), chr(34) * 2)}"')
    csv = tmp_path / "labels.csv"
    csv.write_bytes(("\n".join(rows) + "\n").encode("utf-16"))  # UTF-16 with a BOM is valid input
    out = tmp_path / "run"
    before = set(tmp_path.parent.rglob("*"))
    rc, err = _fit(["--data", str(csv), *tiny_args(tiny_ckpt), "--strategy", "linear_probe", "--lp-epochs", "2", "--out", str(out)], capsys)
    assert rc == 0, err
    assert sorted(json.loads((out / "model.json").read_text())["classes"]) == sorted(labels)
    created = {p for p in set(tmp_path.parent.rglob("*")) - before if "tk-cache" not in str(p)}
    assert all(str(p).startswith(str(out)) for p in created), [str(p) for p in created if not str(p).startswith(str(out))]
    assert not (tmp_path.parent / "evil").exists() and not (tmp_path.parent.parent / "evil").exists()


def test_rundir_refuses_paths_outside(tmp_path):
    from transferkit.rundir import RunDir

    rd = RunDir(tmp_path / "run").create()
    for bad in ("../x.json", "/tmp/x.json", "a/b/c.json"):
        with pytest.raises(ValueError):
            rd.write_bytes(bad, b"{}")
    rd.release()


# ------------------------------------------------------------------------------------ odd image files


def test_odd_image_files_decode_as_a_person_sees_them(tmp_path):
    """16-bit grayscale (microscopy, medical) used to be clipped to 255 by PIL's convert("RGB"), so
    most of the image came out white; a phone photo's EXIF orientation was ignored. Other modes
    (CMYK, LA, palette, 1-bit, RGBA) come out as 8-bit RGB."""
    import numpy as np

    from transferkit.data import _decode_one

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (16, 24), dtype=np.uint8)
    Image.fromarray(ref).save(tmp_path / "ref.png")
    Image.fromarray(ref.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # the same picture in 16 bits
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    Image.fromarray(ref.astype(np.float32) / 255).save(tmp_path / "unit.tiff")  # floats in [0, 1]
    want, _ = _decode_one(str(tmp_path / "ref.png"), 16, "bicubic")
    for name in ("deep.png", "unit.tiff"):
        got, err = _decode_one(str(tmp_path / name), 16, "bicubic")
        assert err is None and np.abs(got.astype(int) - want.astype(int)).max() <= 1, name

    wide = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)  # stored landscape, shown portrait (EXIF 6: turn 90 clockwise)
    im = Image.fromarray(wide)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "turned.png", exif=exif)
    Image.fromarray(np.ascontiguousarray(np.rot90(wide, k=-1))).save(tmp_path / "upright.png")
    got, _ = _decode_one(str(tmp_path / "turned.png"), 16, "bicubic")
    want, _ = _decode_one(str(tmp_path / "upright.png"), 16, "bicubic")
    np.testing.assert_array_equal(got, want)

    rgb = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    for name, img in (("cmyk.jpg", rgb.convert("CMYK")), ("la.png", rgb.convert("LA")), ("pal.gif", rgb.convert("P")),
                      ("bw.bmp", rgb.convert("1")), ("rgba.webp", rgb.convert("RGBA"))):
        img.save(tmp_path / name)
        got, err = _decode_one(str(tmp_path / name), 16, "bicubic")
        assert err is None and got.shape == (16, 16, 3) and got.dtype == np.uint8, name


def test_hidden_files_and_macos_zip_folders_are_not_images(tmp_path):
    """A folder unzipped from macOS holds `__MACOSX/` and `._photo.jpg` resource forks with image
    suffixes; `__MACOSX` was taken for a class and the forks for corrupt images."""
    from transferkit.data import image_files, load_image_data

    d = make_folder(tmp_path / "d", n=3)
    (d / "red" / "deeper").mkdir()
    Image.new("RGB", (20, 20), "red").save(d / "red" / "deeper" / "nested.png")  # nested folders are kept
    for junk in (d / "__MACOSX" / "red" / "._0.png", d / "red" / "._0.png", d / ".git" / "x.png", d / "blue" / ".thumbs" / "t.png"):
        junk.parent.mkdir(parents=True, exist_ok=True)
        junk.write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (d / ".DS_Store").write_bytes(b"junk")
    sp = load_image_data(str(d), val_fraction=0.34)
    assert sp.classes == ["blue", "red"] and len(sp.train.sources) + len(sp.val.sources) == 7
    found = image_files(d)
    assert len(found) == 7 and (d / "red" / "deeper" / "nested.png") in found
    assert not any(part.startswith((".", "__MACOSX")) for p in found for part in p.relative_to(d).parts)


def test_an_output_that_is_a_device_or_a_fifo_is_written_into_not_replaced(tmp_path):
    """`predict RUN x.png --out /dev/null` wrote a temporary file and renamed it over the path: as root
    that replaced /dev/null itself with a regular file, for every program on the machine. A FIFO
    stands in for the device here."""
    import os
    import stat

    from transferkit.rundir import atomic_write_bytes

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        atomic_write_bytes(fifo, b"file,label\n")
        assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.read(reader, 100) == b"file,label\n"
    finally:
        os.close(reader)
