import torch
from torch import nn

from transferkit.config import RegConfig
from transferkit.regularizers import Penalty


def _named():
    torch.manual_seed(0)
    bb = nn.Linear(4, 3)
    head = nn.Linear(3, 2)
    named = [(f"backbone.{n}", p) for n, p in bb.named_parameters()] + [(f"head.{n}", p) for n, p in head.named_parameters()]
    return bb, head, named


def test_l2sp_is_zero_at_pretrained_point_and_gradient_points_back():
    bb, head, named = _named()
    pen = Penalty(RegConfig(l2sp_alpha=0.5), named)
    assert pen().item() == 0.0
    w0 = bb.weight.detach().clone()
    with torch.no_grad():
        bb.weight.add_(torch.randn_like(bb.weight))
    value = pen()
    assert torch.isclose(value, 0.5 * ((bb.weight - w0) ** 2).sum() + 0.5 * ((bb.bias - bb.bias.detach()) ** 2).sum())
    value.backward()
    # d/dw alpha||w - w0||^2 = 2 alpha (w - w0): a step against the gradient moves w toward w0
    assert torch.allclose(bb.weight.grad, 2 * 0.5 * (bb.weight.detach() - w0))
    before = (bb.weight.detach() - w0).norm()
    after = (bb.weight.detach() - 0.1 * bb.weight.grad - w0).norm()
    assert after < before
    assert head.weight.grad is None  # alpha acts on the backbone only


def test_l2sp_beta_l1_l2_formulas_and_frozen_skipped():
    bb, head, named = _named()
    pen = Penalty(RegConfig(l2sp_beta=0.3, l1=0.1, l2=0.2), named)
    weights = [bb.weight, head.weight]  # biases excluded from l1 / l2
    expect = 0.3 * (head.weight**2).sum() + 0.1 * sum(w.abs().sum() for w in weights) + 0.2 * sum((w**2).sum() for w in weights)
    assert torch.isclose(pen(), expect)
    bb.weight.requires_grad_(False)
    expect_frozen = 0.3 * (head.weight**2).sum() + 0.1 * head.weight.abs().sum() + 0.2 * (head.weight**2).sum()
    assert torch.isclose(pen(), expect_frozen)


def test_no_penalty_when_off():
    _, _, named = _named()
    assert Penalty(RegConfig(), named)() is None


def test_l2sp_pulls_toward_the_reference_it_is_given_and_leaves_lora_adapters_alone():
    """A resumed run builds its penalty after loading moved weights: w0 must come from before (it
    pulled toward the checkpoint). LoRA's adapters have no pretrained values: they were pulled toward
    their random start, though the CLI called --l2sp-alpha unused by lora."""
    from transferkit.regularizers import pretrained_reference

    bb, head, named = _named()
    cfg = RegConfig(l2sp_alpha=1.0)
    w0 = pretrained_reference(named, cfg)
    assert set(w0) == {"backbone.weight", "backbone.bias"} and pretrained_reference(named, RegConfig()) == {}
    with torch.no_grad():
        bb.weight.add_(1.0)  # the checkpoint's weights
    assert torch.isclose(Penalty(cfg, named, w0=w0)(), torch.tensor(12.0))  # 12 elements, each 1 away from w0
    assert Penalty(cfg, named)().item() == 0.0  # without a reference: the weights as they are now
    lora = nn.Parameter(torch.randn(2, 4))
    with_lora = named + [("backbone.layer.lora_A.default.weight", lora)]
    pen = Penalty(cfg, with_lora, w0=pretrained_reference(with_lora, cfg))
    with torch.no_grad():
        lora.add_(5.0)
    assert torch.isclose(pen(), torch.tensor(0.0)) and "backbone.layer.lora_A.default.weight" not in pretrained_reference(with_lora, cfg)
