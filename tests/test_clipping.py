import torch
from accelerate import Accelerator
from torch import nn

from transferkit.config import RunConfig, replace
from transferkit.trainer import _clip


def _grads(scale):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    (m(torch.randn(5, 8)) * scale).sum().backward()
    return m, [p for p in m.parameters()]


def test_clip_by_value_bounds_every_element_and_counts():
    acc = Accelerator(cpu=True)
    m, params = _grads(100.0)
    assert max(p.grad.abs().max() for p in params) > 0.01
    fired = _clip(acc, params, replace(RunConfig(), clip_value=0.01))
    assert float(fired) == 1.0
    assert all(p.grad.abs().max() <= 0.01 for p in params)
    m, params = _grads(1e-6)
    before = [p.grad.clone() for p in params]
    assert float(_clip(acc, params, replace(RunConfig(), clip_value=0.01))) == 0.0
    assert all(torch.equal(a, p.grad) for a, p in zip(before, params))


def test_clip_by_norm_bounds_total_norm_and_keeps_direction():
    acc = Accelerator(cpu=True)
    m, params = _grads(100.0)
    before = torch.cat([p.grad.flatten() for p in params])
    assert before.norm() > 1.0
    assert float(_clip(acc, params, replace(RunConfig(), clip_norm=1.0))) == 1.0
    after = torch.cat([p.grad.flatten() for p in params])
    assert after.norm() <= 1.0 + 1e-5
    assert torch.allclose(after / after.norm(), before / before.norm(), atol=1e-6)


def test_no_clipping_configured_changes_nothing():
    acc = Accelerator(cpu=True)
    m, params = _grads(100.0)
    before = [p.grad.clone() for p in params]
    assert float(_clip(acc, params, RunConfig())) == 0.0
    assert all(torch.equal(a, p.grad) for a, p in zip(before, params))
