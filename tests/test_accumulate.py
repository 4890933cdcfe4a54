"""Gradient accumulation (`--accumulate N`): each batch forwarded in N micro-batches gives the same
optimizer steps as the whole batch, with the loss's class weights, label smoothing, penalty and
clipping; running out of memory splits the step further and the run ends as it would have.
Evaluation and the feature pass halve their batches instead."""

import contextlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit import report
from transferkit.backbones.small_convnet import SmallConvNet
from transferkit.config import RunConfig, replace
from transferkit.errors import UserError
from transferkit.fit import fit


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """Two classes of 14 and 8 images: class weights differ, and the default validation split leaves
    an uneven number of training images."""
    root = tmp_path_factory.mktemp("uneven")
    rng = np.random.default_rng(0)
    for c, col, n in [("red", (200, 40, 40), 14), ("blue", (40, 40, 200), 8)]:
        (root / c).mkdir()
        for i in range(n):
            a = np.clip(np.array(col)[None, None] + rng.normal(0, 60, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{i}.png")
    return root


def _fit(root, out, **kw):
    base = dict(data=str(root), model="small_convnet", strategy="full", epochs=2, batch_size=7, optimizer="sgd", lr=0.05,
                class_weight="balanced", label_smoothing=0.1, l2sp_alpha=0.05, l1=1e-4, clip_norm=0.5, precision="no", calibrate="none")
    base.update(kw)
    return fit(replace(RunConfig(), **base), out, console=report.console(quiet=True))


def _assert_same_weights(a, b, atol=2e-6):
    wa, wb = a.model.state_dict(), b.model.state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=atol, rtol=1e-5, msg=k)


def test_micro_batches_give_the_same_steps(uneven, tmp_path):
    """SGD (no Adam normalisation to hide a wrongly scaled gradient), balanced class weights, label
    smoothing, L1 + L2-SP and norm clipping; batch 7 in 3 micro-batches of 3, 2, 2, and in 7 of one."""
    one = _fit(uneven, tmp_path / "one")
    for parts in (3, 7, 50):  # 50: more than a batch holds, one example each
        split = _fit(uneven, tmp_path / f"acc{parts}", accumulate=parts)
        _assert_same_weights(one, split)
        assert [h["train_loss"] for h in split.history] == pytest.approx([h["train_loss"] for h in one.history], abs=1e-5)
        assert split.metrics["optimizer_steps"] == one.metrics["optimizer_steps"]
        assert split.metrics["micro_batches"] == parts
    assert one.metrics["micro_batches"] == 1
    # the comparison sees the loss's details: without the class weights the same run ends elsewhere
    unweighted = _fit(uneven, tmp_path / "unweighted", class_weight="none")
    with pytest.raises(AssertionError):
        _assert_same_weights(one, unweighted)


def test_lp_ft_with_frozen_batchnorm_statistics_is_unchanged(tmp_path, tiny_ckpt, tiny_folder):
    """lp_ft freezes BatchNorm statistics by default, so a ResNet's fine-tuning steps are the same in
    micro-batches too (trainable statistics would see smaller batches)."""
    kw = dict(data=str(tiny_folder), model=f"file:{tiny_ckpt}", arch="cifar_resnet20", input_size=16, batch_size=8, epochs=2,
              lp_epochs=3, precision="no", ft_patience=0)
    con = report.console(quiet=True)
    one = fit(replace(RunConfig(), **kw), tmp_path / "one", console=con)
    four = fit(replace(RunConfig(), accumulate=4, **kw), tmp_path / "four", console=con)
    assert [h["phase"] for h in one.history].count("2:finetune") == 2
    assert one.metrics["best_epoch"] == four.metrics["best_epoch"] == 5  # the kept weights are fine-tuned ones, not the probe's
    _assert_same_weights(one, four, atol=1e-5)


class _OutOfMemoryAbove:
    """A forward that runs out of memory, as CUDA says it, on training batches above `limit` examples."""

    def __init__(self, limit):
        self.limit, self.calls = limit, []
        self.forward = SmallConvNet.forward

    def __call__(self, module, x):
        if module.training and torch.is_grad_enabled():  # a training step (not the lazy layer's first call, not evaluation)
            self.calls.append(len(x))
            if len(x) > self.limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake, from the test)")
        return self.forward(module, x)


def test_out_of_memory_splits_the_step_and_the_run_ends_the_same(uneven, tmp_path, monkeypatch, capsys):
    one = _fit(uneven, tmp_path / "one")
    oom = _OutOfMemoryAbove(2)
    monkeypatch.setattr(SmallConvNet, "forward", lambda self, x: oom(self, x))
    split = fit(replace(RunConfig(), data=str(uneven), model="small_convnet", strategy="full", epochs=2, batch_size=7, optimizer="sgd",
                        lr=0.05, class_weight="balanced", l2sp_alpha=0.05, l1=1e-4, clip_norm=0.5, precision="no", calibrate="none"),
                tmp_path / "oom", console=report.console())
    _assert_same_weights(one, split)
    assert split.metrics["micro_batches"] == 4  # 7 -> 2 of 4 -> 4 of at most 2
    assert oom.calls[:3] == [7, 4, 2]  # the first step: whole, halves (the first ran out), quarters
    assert max(oom.calls[3:]) <= 2  # after that every step starts with 4 micro-batches
    out = capsys.readouterr().out
    assert "out of memory at 7 examples a forward pass" in out and "4 micro-batches of at most 2" in out


def test_out_of_memory_at_one_example_is_a_clear_error(uneven, tmp_path, monkeypatch):
    oom = _OutOfMemoryAbove(0)
    monkeypatch.setattr(SmallConvNet, "forward", lambda self, x: oom(self, x))
    with pytest.raises(UserError, match="out of memory even at 1 example a forward pass"):
        _fit(uneven, tmp_path / "oom")


def test_other_runtime_errors_are_not_taken_for_memory(uneven, tmp_path, monkeypatch):
    forward = SmallConvNet.forward

    def broken(self, x):
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (7x10 and 12x3)")
        return forward(self, x)

    monkeypatch.setattr(SmallConvNet, "forward", broken)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        _fit(uneven, tmp_path / "broken")


def test_accumulate_must_be_positive():
    with pytest.raises(UserError, match="accumulate must be >= 1"):
        replace(RunConfig(), accumulate=0).validate()


def test_lr_find_steps_in_micro_batches_and_survives_running_out_of_memory(uneven, tmp_path, monkeypatch, capsys):
    from transferkit.lr_find import lr_find

    cfg = replace(RunConfig(), data=str(uneven), model="small_convnet", strategy="full", batch_size=7, precision="no")
    quiet = report.console(quiet=True)
    one = lr_find(cfg, steps=12, end_lr=1.0, console=quiet)
    three = lr_find(replace(cfg, accumulate=3), steps=12, end_lr=1.0, console=quiet)
    assert three.raw_losses == pytest.approx(one.raw_losses, rel=1e-5)
    oom = _OutOfMemoryAbove(3)
    monkeypatch.setattr(SmallConvNet, "forward", lambda self, x: oom(self, x))
    split = lr_find(cfg, steps=12, end_lr=1.0, console=report.console())
    assert split.raw_losses == pytest.approx(one.raw_losses, rel=1e-5)
    assert oom.calls[:2] == [7, 4] and max(oom.calls[2:]) <= 3
    out = capsys.readouterr().out
    assert "at 7 examples a forward pass: each step now runs in 2 micro-batches of at most 4" in out
    assert "at 4 examples a forward pass: each step now runs in 4 micro-batches of at most 2" in out


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_text_micro_batches_give_the_same_steps(tmp_path, strategy):
    """A text model's batch (token ids and attention masks, padded to the batch's longest text) split
    into micro-batches: the same steps, with dropout off (its draws would differ with the split)."""
    import json

    from conftest import make_text_csv, make_tiny_bert

    bert = make_tiny_bert(tmp_path / "bert")
    spec = json.loads((bert / "config.json").read_text())
    spec.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (bert / "config.json").write_text(json.dumps(spec))
    data = make_text_csv(tmp_path / "t.csv", n=12)
    base = dict(data=str(data), model=f"dir:{bert}", strategy=strategy, epochs=2, batch_size=8, max_length=32, precision="no",
                calibrate="none", lora_dropout=0.0, lr=1e-3)
    con = report.console(quiet=True)
    one = fit(replace(RunConfig(), **base), None, console=con)
    three = fit(replace(RunConfig(), accumulate=3, **base), None, console=con)
    _assert_same_weights(one, three, atol=1e-5)
    assert [h["train_loss"] for h in three.history] == pytest.approx([h["train_loss"] for h in one.history], abs=1e-5)


def _fake_oom_above(limit, fn, sizes):
    def wrapped(x, *a, **k):
        sizes.append(len(x))
        if len(x) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (fake, from the test)")
        return fn(x, *a, **k)

    return wrapped


def test_evaluation_and_features_halve_their_batch_when_out_of_memory():
    """predict_proba and the feature pass give the same rows at any batch size, so they go on in
    smaller batches; the slices after the first keep the smaller size."""
    from transferkit.features import compute_features
    from transferkit.memory import in_batches
    from transferkit.trainer import predict_proba

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x = torch.randn(11, 3, 2, 2)
    whole = predict_proba(net, x, lambda t: t, 64, contextlib.nullcontext)
    sizes = []
    net.forward = _fake_oom_above(3, net.forward, sizes)
    small = predict_proba(net, x, lambda t: t, 8, contextlib.nullcontext)
    torch.testing.assert_close(small, whole)
    assert sizes == [8, 4, 2, 2, 2, 2, 2, 1]

    bb = SmallConvNet(input_size=16).eval()
    imgs = torch.randint(0, 256, (9, 3, 16, 16), dtype=torch.uint8)
    ref = compute_features(bb, imgs, 16, batch_size=32)
    sizes.clear()
    bb.forward = _fake_oom_above(4, bb.forward, sizes)
    torch.testing.assert_close(compute_features(bb, imgs, 16, batch_size=32, rows=range(9)), ref)
    assert sizes == [8, 4, 4, 1]  # images on a CPU: 8 a pass at most (memory.CPU_IMAGES_A_PASS), then halved

    with pytest.raises(torch.OutOfMemoryError):  # at one example the error stands
        in_batches(3, 4, lambda i, j: _fake_oom_above(0, lambda x: x, [])(list(range(i, j))))
    with pytest.raises(ValueError):  # and other errors are not taken for memory
        in_batches(3, 4, lambda i, j: int("x"))


def test_images_on_a_cpu_train_in_small_passes_only_while_batchnorm_statistics_rest(uneven, tmp_path, monkeypatch, tiny_ckpt, tiny_folder):
    """A CPU trains images faster in passes of at most memory.CPU_IMAGES_A_PASS: the same steps as one
    pass (a model without BatchNorm here), never more than that many a pass. A model whose BatchNorm
    statistics train keeps whole batches (smaller ones would normalise differently)."""
    from transferkit import memory
    from transferkit.backbones.cifar_resnet import CifarResNet

    sizes = []
    forward = SmallConvNet.forward

    def counted(self, x):
        if self.training and torch.is_grad_enabled():
            sizes.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(SmallConvNet, "forward", counted)
    monkeypatch.setattr(memory, "CPU_IMAGES_A_PASS", 3)
    small = _fit(uneven, tmp_path / "small")
    assert max(sizes) == 3 and small.metrics["micro_batches"] == 3  # batch 7: passes of 3, 2, 2
    sizes.clear()
    monkeypatch.setattr(memory, "CPU_IMAGES_A_PASS", 10**6)
    whole = _fit(uneven, tmp_path / "whole")
    assert max(sizes) == 7 and whole.metrics["micro_batches"] == 1
    _assert_same_weights(whole, small)

    monkeypatch.setattr(memory, "CPU_IMAGES_A_PASS", 3)
    seen = []
    resnet_forward = CifarResNet.forward
    monkeypatch.setattr(CifarResNet, "forward", lambda self, x: (seen.append(len(x)) if self.training else None, resnet_forward(self, x))[1])
    fit(replace(RunConfig(), data=str(tiny_folder), model=f"file:{tiny_ckpt}", arch="cifar_resnet20", input_size=16, batch_size=8,
                strategy="full", epochs=1, precision="no"), None, console=report.console(quiet=True))
    assert max(seen) == 8  # statistics train in `full`: whole batches


def test_the_plan_says_the_batch_and_micro_batches_as_they_are_done(tmp_path, capsys):
    """QA AC: a batch of 5000 for 1,438 training images said "batch 5000", and --accumulate 64 of a
    batch of 32 said "in 64 micro-batches" (32 were done: one example each at most)."""
    from transferkit.cli import main

    assert main(["fit", "--data", "digits:3,8", "--model", "small_convnet", "--strategy", "full", "--epochs", "1", "--batch-size", "500",
                 "--accumulate", "1000", "--calibrate", "none", "--out", str(tmp_path / "r")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    n = json.loads((tmp_path / "r" / "metrics.json").read_text())["n_train"]
    assert f"batch 500 (more than the {n} training examples: every step takes them all) in {n} micro-batches (--accumulate 1000 asked; one example each at most)" in said


def test_class_weights_weigh_examples_and_leave_the_smoothing_uniform():
    """QA AE: PyTorch's weight= weighs label smoothing class by class, so with --class-weight balanced and
    the default smoothing every example was pulled toward the rare class (the loss-minimising p(spam)
    of a ham example was 0.28 instead of 0.05)."""
    import torch.nn.functional as F

    from transferkit.trainer import class_weighted_cross_entropy

    torch.manual_seed(0)
    z, y, w = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 0, 1, 0, 0]), torch.tensor([0.5, 2.0, 4.0])
    torch.testing.assert_close(class_weighted_cross_entropy(z, y, w, 0.0), F.cross_entropy(z, y, weight=w))  # no smoothing: PyTorch's
    torch.testing.assert_close(class_weighted_cross_entropy(z, y, None, 0.1), F.cross_entropy(z, y, label_smoothing=0.1))
    logit = torch.zeros(1, 2, requires_grad=True)
    opt = torch.optim.SGD([logit], lr=1.0)
    for _ in range(500):
        opt.zero_grad()
        class_weighted_cross_entropy(logit, torch.tensor([0]), torch.tensor([0.568, 4.167]), 0.1).backward()
        opt.step()
    assert logit.softmax(1)[0, 1].item() == pytest.approx(0.05, abs=1e-3)  # smoothing's own target, whatever the weights
