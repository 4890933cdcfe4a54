"""Texts in batches of similar length: training batches grouped by length (`--group-by-length`,
transformers' group_by_length) keep every example and pad less; prediction, validation and the feature pass run
longest first and give every row back in its place; a stopped text run resumes bit-identically."""

import numpy as np
import pytest
import torch

from conftest import make_text_csv
from transferkit import report
from transferkit.config import RunConfig, replace
from transferkit.fit import fit
from transferkit.trainer import StopRequested, epoch_order, group_by_length


def _padded(order: torch.Tensor, lengths: torch.Tensor, bs: int) -> int:
    """Tokens computed when each batch is cut to its longest text."""
    return sum(int(lengths[c].max()) * len(c) for c in order.split(bs))


@pytest.mark.parametrize("n, bs, sampler", [(1000, 32, "shuffle"), (1001, 32, "shuffle"), (37, 8, "shuffle"), (5, 8, "shuffle"), (600, 16, "balanced")])
def test_grouped_batches_keep_every_example_and_pad_less(n, bs, sampler):
    g = torch.Generator().manual_seed(0)
    lengths = (3 + 117 * torch.rand(n, generator=g) ** 3).long()  # skewed as real texts are: many short, a few long
    y = torch.randint(0, 3, (n,), generator=g)
    order = epoch_order(y, sampler, g)
    out = group_by_length(order, lengths, bs, torch.Generator().manual_seed(1))
    assert torch.equal(out.sort().values, order.sort().values)  # the same examples, each as often (repeats too)
    assert torch.equal(out, group_by_length(order, lengths, bs, torch.Generator().manual_seed(1)))  # seeded
    full, mega = n // bs, bs * max(1, min(n // (4 * bs), 50))
    # the short batch stays last, where the epoch's batching cuts it: the shortest of the last megabatch
    last = order[(n - 1) // mega * mega :]
    tail = out[full * bs :]
    assert len(tail) == n % bs
    assert sorted(lengths[tail].tolist()) == sorted(lengths[last].tolist())[: len(tail)]
    if full < 8:
        return
    assert not torch.equal(out, group_by_length(order, lengths, bs, torch.Generator().manual_seed(2)))
    real = int(lengths[order].sum())
    assert _padded(order, lengths, bs) > 2 * real  # random batches: about 3x
    assert _padded(out, lengths, bs) < min(1.5 * real, 0.6 * _padded(order, lengths, bs))
    # a batch's texts come from one megabatch of the random order (so batches differ from epoch to
    # epoch), and the batches are shuffled across the epoch, not sorted
    where = {}
    for pos, i in enumerate(order.tolist()):
        where.setdefault(i, set()).add(pos // mega)
    for c in out[: full * bs].split(bs):
        assert set.intersection(*(where[i] for i in c.tolist())), "a batch mixes megabatches"
    firsts = [int(lengths[c].max()) for c in out[: full * bs].split(bs)]
    assert firsts != sorted(firsts, reverse=True)


def test_text_rows_come_back_in_their_order(tiny_bert, monkeypatch):
    """Longest first inside, each row in its place outside: the same probabilities and features as one
    text at a time (texts given shortest, longest, middling, so that an order left sorted shows)."""
    import contextlib

    from transferkit import trainer
    from transferkit.backbones import create_backbone
    from transferkit.backbones.text import trim
    from transferkit.features import compute_features
    from transferkit.model import TransferModel, create_head

    bb = create_backbone(f"dir:{tiny_bert}")
    torch.manual_seed(0)
    model = TransferModel(bb, create_head("linear", bb.num_features, 3)).eval()
    texts = ["good", "the movie was good and the acting was great and long", "a bad film", "dull", "the plot was dull, slow and long",
             "great acting", "a", "the film was bad"]
    x, _ = bb.tokenize(texts, 32)
    one_by_one = torch.cat([trainer.predict_proba(model, x[i : i + 1], trim, 1, contextlib.nullcontext) for i in range(len(x))])
    for bs in (2, 3, 64):
        torch.testing.assert_close(trainer.predict_proba(model, x, trim, bs, contextlib.nullcontext), one_by_one, atol=1e-5, rtol=0)
    rows = [5, 1, 0, 7, 2]
    with torch.no_grad():
        want = torch.cat([bb(trim(x[i : i + 1])) for i in rows])
    torch.testing.assert_close(compute_features(bb, x, 32, rows=rows, batch_size=2), want, atol=1e-5, rtol=0)
    # the passes did run longest first: the first pass of two holds the two longest texts
    seen = []
    monkeypatch.setattr(model, "forward", lambda t: (seen.append(t.shape[1]), torch.zeros(len(t), 3))[1])
    trainer.predict_proba(model, x, trim, 2, contextlib.nullcontext)
    assert seen == sorted(seen, reverse=True) and seen[0] == int((x >= 0).sum(1).max())


def test_text_run_grouped_by_length_resumes_bit_identically(tmp_path, tiny_bert):
    from test_resume import StopAfter, _same

    data = make_text_csv(tmp_path / "t.csv", n=24)
    con = report.console(quiet=True)
    cfg = replace(RunConfig(), data=str(data), model=f"dir:{tiny_bert}", strategy="full", epochs=2, batch_size=8, max_length=32, group_by_length=True)
    fit(cfg, tmp_path / "whole", console=con)
    with pytest.raises(StopRequested):
        fit(cfg, tmp_path / "cut", console=con, should_stop=StopAfter(3))
    fit(cfg, tmp_path / "cut", console=con, resume=True)
    _same(tmp_path / "whole", tmp_path / "cut")
    # and the option is honoured: random batches (the default) end elsewhere
    fit(replace(cfg, group_by_length=False), tmp_path / "random", console=con)
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "random" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(sorted(a), sorted(b))
