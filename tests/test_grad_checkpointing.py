"""`--grad-checkpointing`: the backbone's blocks run again in the backward pass instead of keeping their
activations, and training takes the same steps; a backbone that cannot is refused with a message."""

import json

import pytest
import torch

from conftest import make_folder, make_text_csv, make_tiny_bert
from transferkit import report
from transferkit.config import RunConfig, replace
from transferkit.errors import UserError
from transferkit.fit import fit

QUIET = report.console(quiet=True)


def _counting(monkeypatch, cls):
    """Count the training-mode calls of `cls.forward`."""
    calls = []
    forward = cls.forward

    def counted(self, *a, **k):
        if self.training:
            calls.append(1)
        return forward(self, *a, **k)

    monkeypatch.setattr(cls, "forward", counted)
    return calls


def _same(a, b, atol=1e-5):
    wa, wb = a.model.state_dict(), b.model.state_dict()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=atol, rtol=1e-5, msg=k)


def test_timm_blocks_run_twice_and_the_steps_are_the_same(tmp_path, monkeypatch):
    from timm.models.resnet import BasicBlock

    data = make_folder(tmp_path / "d", n=8, size=20)
    kw = dict(data=str(data), model="random:resnet18", input_size=32, strategy="full", bn_stats="frozen", epochs=1, batch_size=8,
              precision="no", calibrate="none")
    calls = _counting(monkeypatch, BasicBlock)
    plain = fit(replace(RunConfig(), **kw), None, console=QUIET)
    n_plain = len(calls)
    calls.clear()
    ckpt = fit(replace(RunConfig(), grad_checkpointing=True, **kw), None, console=QUIET)
    steps = plain.metrics["optimizer_steps"]
    assert steps == 2 and n_plain == 8 * steps  # 8 blocks a forward
    assert len(calls) == 2 * n_plain  # each block again in the backward pass
    _same(plain, ckpt)
    assert not ckpt.model.backbone.model.grad_checkpointing  # the fitted model computes plainly


def test_hugging_face_layers_run_twice_and_the_steps_are_the_same(tmp_path, monkeypatch):
    # a part of each layer: transformers checkpoints a layer by wrapping its class's own forward, which
    # patching BertLayer.forward would replace
    from transformers.models.bert.modeling_bert import BertIntermediate

    bert = make_tiny_bert(tmp_path / "bert")
    spec = json.loads((bert / "config.json").read_text())
    spec.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # dropout draws would differ in the recomputation
    (bert / "config.json").write_text(json.dumps(spec))
    data = make_text_csv(tmp_path / "t.csv", n=8)
    kw = dict(data=str(data), model=f"dir:{bert}", strategy="lora", lora_dropout=0.0, epochs=1, batch_size=8, max_length=32,
              precision="no", calibrate="none", lr=1e-3)
    calls = _counting(monkeypatch, BertIntermediate)
    plain = fit(replace(RunConfig(), **kw), None, console=QUIET)
    n_plain = len(calls)
    calls.clear()
    ckpt = fit(replace(RunConfig(), grad_checkpointing=True, **kw), None, console=QUIET)
    assert n_plain == 2 * plain.metrics["optimizer_steps"]  # 2 layers
    assert len(calls) == 2 * n_plain
    _same(plain, ckpt)
    m = ckpt.model.backbone.model
    assert not (m.is_activation_checkpointing if hasattr(m, "is_activation_checkpointing") else m.is_gradient_checkpointing)


def test_a_backbone_that_cannot_is_refused(tmp_path):
    data = make_folder(tmp_path / "d", n=4, size=16)
    with pytest.raises(UserError, match="--grad-checkpointing: --model small_convnet .*cannot recompute"):
        fit(replace(RunConfig(), data=str(data), model="small_convnet", grad_checkpointing=True, epochs=1), None, console=QUIET)
