"""A run stopped in the middle (of an epoch, of the gradual schedule) and resumed ends bit-identical
to the same run never interrupted."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from transferkit import report
from transferkit.backbones.cifar_resnet import CifarResNet
from transferkit.config import RunConfig, replace
from transferkit.errors import UserError
from transferkit.fit import fit
from transferkit.trainer import StopRequested

VOLATILE = {"wall_s", "timing", "train_images_per_s", "train_texts_per_s", "feature_cache_hit"}  # run facts, not results


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for c, col in [("red", (200, 40, 40)), ("blue", (40, 40, 200))]:
        (root / c).mkdir()
        for i in range(12):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 50, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{i}.png")
    torch.manual_seed(0)
    ck = root.parent / "r20.safetensors"
    save_file(CifarResNet(20).state_dict(), str(ck))
    return root, ck


def _cfg(tiny, **kw):
    root, ck = tiny
    base = dict(data=str(root), model=f"file:{ck}", arch="cifar_resnet20", input_size=16, batch_size=4, epochs=4, lp_epochs=3)
    base.update(kw)
    return replace(RunConfig(), **base)


class StopAfter:
    def __init__(self, n):
        self.n = n
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.calls > self.n


def _same(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert "resumed" not in ma and mb.get("resumed", "").startswith("from the checkpoint ")  # a resumed run says so (QA AC)
    mb.pop("resumed")
    for m in (ma, mb):
        for k in VOLATILE:
            m.pop(k, None)
        for k in ("scratch", "base"):  # a --baseline comparison's own wall time
            m.get(k, {}).pop("wall_s", None)
    assert ma == mb
    ha = [r.split(",")[:-1] for r in (a / "history.csv").read_text().splitlines()]  # drop the seconds column
    hb = [r.split(",")[:-1] for r in (b / "history.csv").read_text().splitlines()]
    assert ha == hb


@pytest.mark.parametrize("strategy, stop_after, extra", [("gradual", 9, {}), ("gradual", 6, {}), ("lp_ft", 3, {}), ("full", 11, {}), ("full", 7, {"ema": 0.9}), ("full", 5, {"accumulate": 3}),
                                                         ("full", 7, {"l2sp_alpha": 1.0}), ("lp_ft", 6, {"l2sp_alpha": 1.0})])
def test_stop_and_resume_is_bit_identical(tiny, tmp_path, strategy, stop_after, extra):
    con = report.console(quiet=True)
    cfg = _cfg(tiny, strategy=strategy, unfreeze_every=1, k=2, **extra)
    fit(cfg, tmp_path / "whole", console=con)
    with pytest.raises(StopRequested):
        fit(cfg, tmp_path / "cut", console=con, should_stop=StopAfter(stop_after))
    assert not (tmp_path / "cut" / "manifest.json").exists()
    assert (tmp_path / "cut" / "checkpoints" / "checkpoints.json").exists()
    import io
    import re

    from rich.console import Console

    latest = max(int(re.sub(r"\D", "", p.stem)) for p in (tmp_path / "cut" / "checkpoints").glob("ckpt-*"))  # its tag: the epochs done
    said = Console(file=io.StringIO(), record=True, width=200)
    fit(cfg, tmp_path / "cut", console=said, resume=True)
    _same(tmp_path / "whole", tmp_path / "cut")
    # the message names the epoch the checkpoint was taken after (or inside): all phases' epochs counted
    line = next(ln for ln in said.export_text().splitlines() if ln.startswith("resuming from the checkpoint"))
    assert f"after epoch {latest} " in line or f"inside epoch {latest + 1} " in line, (line, latest)


def test_damaged_checkpoint_falls_back_to_previous(tiny, tmp_path, capsys):
    con = report.console(quiet=True)
    cfg = _cfg(tiny, strategy="full")
    fit(cfg, tmp_path / "whole", console=con)
    with pytest.raises(StopRequested):
        fit(cfg, tmp_path / "cut", console=con, should_stop=StopAfter(14))
    index = json.loads((tmp_path / "cut" / "checkpoints" / "checkpoints.json").read_text())["checkpoints"]
    assert len(index) == 2
    newest = tmp_path / "cut" / "checkpoints" / index[-1]["file"]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    msgs = []
    from transferkit.checkpoint import Checkpointer

    state = Checkpointer(tmp_path / "cut" / "checkpoints").load_latest(log=msgs.append)
    assert state is not None and "damaged" in msgs[0]
    fit(cfg, tmp_path / "cut", console=con, resume=True)
    _same(tmp_path / "whole", tmp_path / "cut")


def test_resume_of_finished_run_is_refused(tiny, tmp_path):
    cfg = _cfg(tiny, strategy="linear_probe")
    fit(cfg, tmp_path / "done", console=report.console(quiet=True))
    with pytest.raises(UserError, match="nothing to resume"):
        fit(cfg, tmp_path / "done", resume=True)
    # QA C: one file changed since it finished: --resume deleted the run's files and trained it all again
    before = (tmp_path / "done" / "metrics.json").read_bytes()
    with open(tmp_path / "done" / "model.safetensors", "ab") as f:
        f.write(b"x")
    with pytest.raises(UserError, match=r"done finished, but its files changed since \(model.safetensors does not match its sha256.*nothing to resume"):
        fit(cfg, tmp_path / "done", resume=True)
    assert (tmp_path / "done" / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("manifest, said", [("[]", "is damaged (TypeError"), ('{"files": ["model.json"]}', "its `files` is not a mapping"),
                                            ('{"files": {}}', "model.json is not in the manifest")])
def test_a_manifest_of_another_shape_is_damaged_not_a_traceback_or_complete(tiny, tmp_path, manifest, said):
    """QA B: valid JSON of another shape raised TypeError / AttributeError in every command, and a
    manifest listing no files passed a run without weights as complete."""
    from transferkit.rundir import require_finished, verify

    run = tmp_path / "r"
    run.mkdir()
    (run / "manifest.json").write_text(manifest)
    assert any(said in p for p in verify(run)), verify(run)
    with pytest.raises(UserError, match="finished, but its files changed since"):
        require_finished(run)


def test_stop_while_encoding_or_computing_features_is_immediate(tiny, tmp_path, monkeypatch):
    """A stop request before training has begun (decoding, backbone features) stops at once, leaves
    no finished run, and the run starts again with --resume; `should_stop` is not consulted there."""
    import transferkit.fit as fit_mod
    from transferkit.rundir import is_complete

    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path / "cache"))  # nothing decoded or computed before
    con = report.console(quiet=True)
    cfg = _cfg(tiny, strategy="lp_ft", epochs=1)
    asked = []
    with pytest.raises(StopRequested) as e:  # while the images are encoded: nothing is written
        fit(cfg, tmp_path / "enc", console=con, should_stop=lambda: asked.append(1) or False, should_abort=lambda: True)
    assert not e.value.checkpointed and asked == [] and not (tmp_path / "enc").exists()

    flag = {"on": False}
    real, batches = fit_mod.cached_features, []

    def features_then_stop(*a, **kw):
        flag["on"] = True  # the request arrives once the backbone runs
        inner = kw["progress"]
        return real(*a, **{**kw, "progress": lambda n: (batches.append(n), inner(n))})

    monkeypatch.setattr(fit_mod, "cached_features", features_then_stop)
    with pytest.raises(StopRequested) as e:
        fit(replace(cfg, eval_batch_size=4), tmp_path / "feat", console=con, should_abort=lambda: flag["on"])
    assert not e.value.checkpointed and batches == [4]  # the first of 5 batches, then stopped
    assert (tmp_path / "feat" / "config.yaml").is_file() and not is_complete(tmp_path / "feat")
    monkeypatch.setattr(fit_mod, "cached_features", real)
    fit(cfg, tmp_path / "feat", console=con, resume=True)
    assert is_complete(tmp_path / "feat")


def test_ema_keeps_the_average(tiny, tmp_path):
    """--ema: with a vanishing decay the average is the model itself, so the run is the plain run (the
    plumbing: validate, select and keep the average); with 0.9 the kept weights are another model."""
    con = report.console(quiet=True)
    runs = {e: fit(_cfg(tiny, strategy="full", ema=e), tmp_path / f"e{e}", console=con) for e in (0.0, 1e-9, 0.9)}
    w = {e: r.model.state_dict() for e, r in runs.items()}
    assert all(torch.allclose(w[0.0][k].float(), w[1e-9][k].float(), atol=1e-6) for k in w[0.0])
    assert [h["val_loss"] for h in runs[0.0].history] == pytest.approx([h["val_loss"] for h in runs[1e-9].history], abs=1e-5)
    moved = [k for k in w[0.0] if w[0.0][k].is_floating_point() and not torch.allclose(w[0.0][k], w[0.9][k], atol=1e-4)]
    assert len(moved) > len(w[0.0]) // 2
    assert [h["train_loss"] for h in runs[0.0].history] == pytest.approx([h["train_loss"] for h in runs[0.9].history])  # training itself untouched


def test_stop_during_a_baseline_comparison_fit_resumes_with_the_trained_model(tiny, tmp_path, monkeypatch):
    """Ctrl-C while --baseline scratch trains its comparison: it stops there (it ran to the end), the
    run is not complete, and --resume evaluates the already trained model from its checkpoint (no
    epoch of it again) and runs the comparison: the same result as a run never interrupted."""
    import io

    from rich.console import Console

    import transferkit.fit as fit_mod

    con = report.console(quiet=True)
    cfg = _cfg(tiny, strategy="full", epochs=2, baseline="scratch")
    fit(cfg, tmp_path / "whole", console=con)
    real, seen = fit_mod._comparison_fit, {}

    def compare_then_stop(*a, **kw):
        seen["asked"] = 0

        def stop():  # the request arrives once the comparison fit trains
            seen["asked"] += 1
            return True
        return real(*a[:-1], stop)

    monkeypatch.setattr(fit_mod, "_comparison_fit", compare_then_stop)
    with pytest.raises(StopRequested) as e:
        fit(cfg, tmp_path / "cut", console=con, should_stop=lambda: False)
    assert e.value.checkpointed and seen["asked"] >= 1
    assert not (tmp_path / "cut" / "manifest.json").exists()
    monkeypatch.setattr(fit_mod, "_comparison_fit", real)
    said = Console(file=io.StringIO(), record=True, width=200)
    fit(cfg, tmp_path / "cut", console=said, resume=True)
    assert "resuming from the checkpoint after training (2 epochs)" in said.export_text()
    _same(tmp_path / "whole", tmp_path / "cut")
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert "verdict_scratch" in m


def test_resume_works_from_another_folder_and_refuses_settings_it_would_ignore(tiny, tmp_path, monkeypatch, capsys):
    """The data path was kept as typed (relative), so `fit --resume` from another folder found no data;
    and `--resume RUN --lr 0.5 --epochs 10` exited 0 having used neither."""
    import yaml

    from transferkit.cli import main
    from transferkit.rundir import is_complete

    root, _ = tiny
    monkeypatch.chdir(root.parent)
    run = tmp_path / "cut"
    with pytest.raises(StopRequested):
        fit(_cfg(tiny, data=root.name, strategy="full", epochs=2), run, console=report.console(quiet=True), should_stop=StopAfter(2))
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["path"] == str(root)
    monkeypatch.chdir(tmp_path)
    # a plain fit into it started over in silence, throwing its checkpoints away
    with pytest.raises(UserError, match=r"holds an interrupted run with checkpoints: continue it with `transferkit fit --resume .*cut`, or pass --overwrite"):
        fit(_cfg(tiny, strategy="full", epochs=2), run, console=report.console(quiet=True))
    assert main(["fit", "--resume", str(run), "--lr", "0.5", "--epochs", "10"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--resume continues" in err and "which --epochs, --lr would not change: drop them" in err and not is_complete(run)
    assert main(["fit", "--resume", str(run), "--overwrite"]) == 2 and "which --overwrite would not change" in " ".join(capsys.readouterr().err.split())
    assert main(["fit", "--resume", str(run), "--quiet"]) == 0 and is_complete(run)


def test_resume_refuses_data_that_changed_or_moved(tiny, tmp_path, capsys):
    """A resume after the training images changed went on in silence (QA: 10 bees removed, then
    'resuming from the checkpoint inside epoch 2', rc 0): a run of two datasets. A data folder that
    moved got "data not found", and then --data was refused with --resume."""
    import re
    import shutil

    from transferkit.cli import main

    root, _ = tiny
    data = tmp_path / "data"
    shutil.copytree(root, data)
    cfg = _cfg(tiny, data=str(data), strategy="full", epochs=2)
    with pytest.raises(StopRequested):
        fit(cfg, tmp_path / "cut", console=report.console(quiet=True), should_stop=StopAfter(4))
    (data / "red" / "0.png").write_bytes((data / "blue" / "0.png").read_bytes())  # as many images, one content changed
    with pytest.raises(UserError, match=r"changed since .*cut was checkpointed \(as many training and validation images, other contents or labels\)"):
        fit(cfg, tmp_path / "cut", console=report.console(quiet=True), resume=True)
    (data / "red" / "0.png").unlink()
    assert main(["fit", "--resume", str(tmp_path / "cut"), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(r"\((\d+) training and (\d+) validation images then, (\d+) and (\d+) now\)", err), err
    then_now = [int(v) for v in re.search(r"\((\d+) training and (\d+) validation images then, (\d+) and (\d+) now\)", err).groups()]
    assert sum(then_now[:2]) == 24 and sum(then_now[2:]) == 23, then_now
    shutil.copy(root / "red" / "0.png", data / "red" / "0.png")  # put back as it was: resumes
    data.rename(tmp_path / "moved")
    assert main(["fit", "--resume", str(tmp_path / "cut"), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the data of {tmp_path / 'cut'}, {data}, is not there any more (moved or deleted)" in err
    (tmp_path / "moved").rename(data)
    assert main(["fit", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    # the held-out test split is part of what the run scores: a changed test image is refused too
    from transferkit.inputs import load_splits

    cfg = _cfg(tiny, data=str(data), strategy="full", epochs=2, test_fraction=0.25)
    with pytest.raises(StopRequested):
        fit(cfg, tmp_path / "cut2", console=report.console(quiet=True), should_stop=StopAfter(4))
    held = load_splits(cfg).test.sources[0]
    Image.open(held).transpose(Image.FLIP_LEFT_RIGHT).save(held)
    with pytest.raises(UserError, match=r"changed since .*cut2 was checkpointed \(as many training and validation images, other contents or labels, or another test split\)"):
        fit(cfg, tmp_path / "cut2", console=report.console(quiet=True), resume=True)


def test_a_run_another_process_holds_is_said_to_be_in_use_before_anything_else(tmp_path):
    """QA AC: while a run wrote its report (lock held, manifest just written) --resume said "a finished
    run: nothing to resume" and --out said "already holds a finished run"; mid-training, --out advised
    --resume, which then said "in use"."""
    import os

    from transferkit.rundir import RunDir

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-0001.pt").write_bytes(b"x")
    (run / ".lock").write_text(str(os.getppid()))  # a live process that is not this one
    cfg = replace(RunConfig(), data="digits:3,8", model="small_convnet", epochs=1)
    for make in (lambda: RunDir(run), lambda: RunDir(run, overwrite=True), lambda: fit(cfg, run, resume=True, console=report.console(quiet=True))):
        with pytest.raises(UserError, match=rf"{run} is in use by another transferkit process \(pid {os.getppid()}\)"):
            make()
    (run / "manifest.json").write_text(json.dumps({"files": {}}))  # finished a moment ago, its lock not yet released
    for make in (lambda: RunDir(run), lambda: fit(cfg, run, resume=True, console=report.console(quiet=True))):
        with pytest.raises(UserError, match="is in use by another transferkit process"):
            make()


def test_a_resume_that_would_batch_an_epoch_otherwise_is_refused(tiny, tmp_path, monkeypatch):
    """Review AH: the last batch joins the one before by the process count, so a checkpoint resumed with
    another count could skip an epoch's last examples and shift the schedule in silence."""
    from transferkit.checkpoint import Checkpointer

    con = report.console(quiet=True)
    cfg = _cfg(tiny, strategy="full")
    with pytest.raises(StopRequested):
        fit(cfg, tmp_path / "cut", console=con, should_stop=StopAfter(3))
    real = Checkpointer.load_latest

    def other_count(self, log=None):
        saved = real(self, log)
        saved["phase_state"]["steps_per_epoch"] += 1  # as if taken with another number of processes
        return saved

    monkeypatch.setattr(Checkpointer, "load_latest", other_count)
    with pytest.raises(UserError, match="resume it with the number of processes it ran with"):
        fit(cfg, tmp_path / "cut", console=con, resume=True)


def test_a_stopped_or_failed_fit_releases_its_lock_and_a_reused_pid_holds_none(tiny, tmp_path):
    """QA C: a fit stopped by a signal (or failing) left .lock with its pid, and any later process under
    that pid (a notebook's kernel, a reused pid in a container) made the run "in use" for good."""
    import os

    from transferkit.rundir import RunDir, lock_holder

    out = tmp_path / "r"
    with pytest.raises(StopRequested):
        fit(_cfg(tiny, strategy="full"), out, console=report.console(quiet=True), should_stop=StopAfter(3))
    assert (out / "checkpoints").is_dir() and not (out / ".lock").exists()
    (out / ".lock").write_text(f"{os.getppid()} 1")  # a live pid that started at another time than the lock's writer
    assert lock_holder(out) is None
    RunDir(out, overwrite=True)  # not "in use"
    (out / ".lock").write_text(str(os.getppid()))  # an older lock, the pid alone: held while that process lives
    assert lock_holder(out) == os.getppid()
    (out / ".lock").unlink()
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserError, match="cannot create the folder .*afile is not a directory"):
        RunDir(afile / "sub")  # before any work: fit said it after reading and decoding the data


def test_a_run_being_trained_is_said_to_be_so_not_interrupted(tmp_path):
    """QA C: evaluate on a run another process was training called it interrupted and advised --resume,
    which then said "in use"."""
    import os

    from transferkit.rundir import require_finished

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-0001.pt").write_bytes(b"x")
    (run / ".lock").write_text(str(os.getppid()))
    with pytest.raises(UserError, match=rf"is a run another transferkit process \(pid {os.getppid()}\) is training or writing now"):
        require_finished(run)
    (run / ".lock").unlink()
    with pytest.raises(UserError, match="is an interrupted run"):
        require_finished(run)
