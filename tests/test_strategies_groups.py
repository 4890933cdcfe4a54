import json

import numpy as np
import pytest
import torch

from transferkit.backbones.cifar_resnet import CifarResNet
from transferkit.config import RunConfig, StrategyConfig, replace
from transferkit.errors import UserError
from transferkit.model import TransferModel, create_head, model_groups, set_trainable
from transferkit.optim import build_param_groups
from transferkit.strategies import STRATEGIES, assign_lr_scales, create_phases, frozen_by_pattern


def _model():
    torch.manual_seed(0)
    bb = CifarResNet(8)  # stem + 3 blocks
    return TransferModel(bb, create_head("linear", bb.num_features, 3))


def test_every_parameter_in_exactly_one_group_and_one_optimizer_group():
    m = _model()
    groups = model_groups(m)
    names = [n for g in groups for n, _ in g.params]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters())
    assert len(names) == len(set(names))
    pg = build_param_groups(groups, 0.01)
    ids = [id(p) for g in pg for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters()) and len(ids) == len(set(ids))
    for g in pg:
        assert (g["weight_decay"] == 0.0) == g["name"].endswith(".no_decay")
        assert all((p.ndim < 2) == g["name"].endswith(".no_decay") for p in g["params"])


def test_partial_trains_last_k_and_rejects_large_k():
    m = _model()
    groups = model_groups(m)
    cfg = replace(RunConfig(), strategy="partial", k=2)
    (ph,) = create_phases(cfg, groups)
    assert ph.unfrozen(0) == ["layer2.0", "layer3.0", "head"]
    with pytest.raises(UserError, match="k=5 is larger than the number of block groups"):
        create_phases(replace(RunConfig(), strategy="partial", k=5), groups)
    # the plan's group table says which groups stay frozen, rather than an lr they never get
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from transferkit.data import ImageSet
    from transferkit.report import print_summary

    con = Console(file=io.StringIO(), width=200)
    s = ImageSet(["a", "b"], np.array([0, 1]), ["x", "y"])
    print_summary(con, cfg, SimpleNamespace(train=s, val=s, classes=["x", "y"], source="d", val_given=True, test=None, notes=[]),
                  m, groups, [ph], "input")
    rows = {ln.split()[1]: ln.split()[-2] for ln in con.file.getvalue().splitlines() if ln.startswith("│")}
    assert [rows[g] for g in ("stem", "layer1.0", "layer2.0", "layer3.0", "head")] == ["frozen", "frozen", "1.00e-03", "1.00e-03", "1.00e-03"]


def test_gradual_unfreezes_top_down_every_n_epochs():
    groups = model_groups(_model())
    (ph,) = create_phases(replace(RunConfig(), strategy="gradual", unfreeze_every=2, epochs=12), groups)
    seq = [ph.unfrozen(e) for e in range(10)]
    assert seq[0] == seq[1] == ["head"]
    assert seq[2] == seq[3] == ["layer3.0", "head"]
    assert seq[4] == ["layer2.0", "layer3.0", "head"]
    assert seq[8] == ["stem", "layer1.0", "layer2.0", "layer3.0", "head"] == seq[9]


def test_layer_decay_and_lr_range_scales():
    groups = model_groups(_model())
    assign_lr_scales(groups, StrategyConfig(layer_decay=0.5), lr=1e-3)
    assert [g.lr_scale for g in groups] == [0.5**4, 0.5**3, 0.5**2, 0.5, 1.0]
    assign_lr_scales(groups, StrategyConfig(layer_lr_min=1e-5), lr=1e-3)
    scales = [g.lr_scale for g in groups]
    assert scales[0] == pytest.approx(1e-2) and scales[-1] == 1.0
    ratios = [b / a for a, b in zip(scales, scales[1:])]
    assert all(r == pytest.approx(ratios[0]) for r in ratios)  # geometric
    with pytest.raises(UserError, match=r"layer_lr_min \(0.01\) must be below lr \(0.001\)"):  # it would invert the ramp
        assign_lr_scales(groups, StrategyConfig(layer_lr_min=1e-2), lr=1e-3)


def test_freeze_pattern_must_match_and_keeps_params_frozen():
    m = _model()
    groups = model_groups(m)
    with pytest.raises(UserError, match="matches no parameter"):
        frozen_by_pattern(groups, ["nonexistent_layer"])
    fixed = frozen_by_pattern(groups, [r"^backbone\.bn1\."])
    assert fixed == {"backbone.bn1.weight", "backbone.bn1.bias"}
    set_trainable(m, groups, {g.name for g in groups}, always_frozen=fixed)
    assert not m.backbone.bn1.weight.requires_grad and m.backbone.conv1.weight.requires_grad


def test_unknown_strategy_suggests():
    with pytest.raises(UserError, match="lp_ft"):
        STRATEGIES.get("lpft")


@pytest.mark.parametrize(
    "settings, msg",
    [
        ({"lr": -1.0}, "lr must be > 0"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"gamma": 1.5}, "gamma"),
        ({"decay_rate": 0.0}, "decay_rate"),
        ({"layer_decay": 1.2}, "layer_decay"),
        ({"clip_value": 0.0}, "clip_value must be a finite number > 0"),
        ({"clip_norm": -1.0}, "clip_norm must be a finite number > 0"),
        # inf: a traceback at the schedule (warmup), or a setting that does nothing or stops the run at once
        ({"clip_value": float("inf")}, "clip_value must be a finite number > 0, got inf"),
        ({"clip_norm": float("inf")}, "clip_norm must be a finite number > 0, got inf"),
        ({"warmup_epochs": float("inf")}, "warmup_epochs must be a finite number >= 0, got inf"),
        ({"min_delta": float("inf")}, "min_delta must be a finite number >= 0, got inf"),
        ({"step_size": float("inf")}, "step_size must be a finite number > 0, got inf"),
        ({"milestones": [2.0, float("inf")]}, r"milestones must be finite numbers > 0 \(epochs\), got \[2.0, inf\]"),
        ({"div_factor": float("inf")}, "div_factor and final_div_factor must be finite numbers >= 1"),
        ({"checkpoint_minutes": -1.0}, r"checkpoint_minutes must be a finite number >= 0 \(0: at the end of each epoch only\), got -1.0"),
        ({"checkpoint_minutes": float("nan")}, "checkpoint_minutes must be a finite number >= 0"),
        ({"optimizer": "adamm"}, "adam"),
        ({"schedule": "cosin"}, "cosine"),
    ],
)
def test_bad_settings_rejected_before_training(settings, msg):
    with pytest.raises(UserError, match=msg):
        replace(RunConfig(), **settings).validate()


def test_batchnorm_policy_auto_freezes_statistics_only_after_a_probe():
    groups = model_groups(_model())
    phases = {n: create_phases(replace(RunConfig(), strategy=n), groups) for n in ("full", "partial", "gradual", "lp_ft")}
    assert [p.bn_stats for p in phases["lp_ft"] if p.kind == "finetune"] == ["frozen"]
    assert all(p.bn_stats == "trainable" for n in ("full", "partial", "gradual") for p in phases[n])
    (ft,) = [p for p in create_phases(replace(RunConfig(), strategy="lp_ft", bn_stats="all"), groups) if p.kind == "finetune"]
    assert ft.bn_stats == "all"


def _phases_run(tmp_path, capsys, extra):
    """A fit whose rate (1e-12) leaves every weight bit-identical, so no epoch beats the probe's first:
    each phase runs exactly until its patience ends it (or to its last epoch). Rows per phase."""
    import csv
    import json

    from conftest import make_folder, tiny_args
    from transferkit.cli import main

    d = make_folder(tmp_path / "d", n=5)
    out = tmp_path / "run"
    rc = main(["fit", "--data", str(d), *tiny_args(_ckpt(tmp_path)), "--strategy", "lp_ft", "--lr", "1e-12", "--lp-epochs", "3",
               "--epochs", "6", "--out", str(out), *extra])
    cap = capsys.readouterr()
    err = " ".join((cap.out + cap.err).split())  # rich wraps long lines
    assert rc == 0, err
    rows = list(csv.DictReader((out / "history.csv").open()))
    phases = [r["phase"].split(":")[1] for r in rows]
    return phases.count("probe"), phases.count("finetune"), json.loads((out / "metrics.json").read_text()), err


def _ckpt(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    p = tmp_path / "r20.safetensors"
    save_file(CifarResNet(20).state_dict(), str(p))
    return p


def test_lp_ft_ends_fine_tuning_when_its_first_epochs_do_not_beat_the_probe(tmp_path, capsys):
    probe, ft, m, err = _phases_run(tmp_path, capsys, ["--k", "3", "--lora-r", "4"])  # default ft_patience 3
    assert (probe, ft) == (3, 3) and m["best_epoch"] == 1  # the probe's first epoch stays the best
    assert "ends after 3 epoch(s) if none beats the probe" in err
    # flags lp_ft does not read are said (they were silently ignored); those it reads are not
    assert "note: --k is not used by --strategy lp_ft (only by partial)" in err and "note: --lora-r is not used by --strategy lp_ft (only by lora)" in err
    assert err.count("is not used by") == 2
    # and the fine-tuning that never beat the probe is said, not reported silently as lp_ft's result
    assert "phase 2 (finetune): ended after 3 of 6 epochs: none of its first 3 beat the probe" in err and "whose weights are kept (best epoch 1)" in err
    assert m["phase_notes"] and "none of its first 3 beat the probe" in m["phase_notes"][0]


def test_ft_patience_zero_runs_every_epoch_and_patience_applies_to_every_phase(tmp_path, capsys):
    probe, ft, _, _ = _phases_run(tmp_path / "a", capsys, ["--ft-patience", "0"])
    assert (probe, ft) == (3, 6)
    probe, ft, m, err = _phases_run(tmp_path / "b", capsys, ["--patience", "1"])  # explicit: every phase, ft_patience unused
    assert (probe, ft) == (2, 1)
    # a tie at a lower loss counts as better, and the message says so (QA AG: "no better accuracy for 3 epochs" after 20 flat ones)
    assert ("phase 1 (probe): stopped early after 2 of 3 epochs: no better validation accuracy, nor an equal accuracy at a lower loss, "
            "for 1 epoch(s) (--patience)") in err
    assert "phase 2 (finetune): stopped early after 1 of 6 epochs" in err
    rows = (tmp_path / "b" / "run" / "lr.csv").read_text().splitlines()  # the rate of every step, as lr.png draws it (QA AG: a picture only)
    assert rows[0] == "step,phase,head_lr,lowest_trained_lr" and len(rows) - 1 == m["optimizer_steps"]
    assert {r.split(",")[1] for r in rows[1:]} == {"1:probe", "2:finetune"}


def test_fine_tuning_beats_the_probe_on_accuracy_or_on_loss():
    """lp_ft's give-up rule on validation curves measured on the CPU (lp_ft, 8 fine-tuning epochs):
    digits (seed 2, --test-fraction 0.2) never passed the probe's 96.7% in 3 epochs, but its loss did
    at once; hymenoptera (seed 1) beat the probe on neither in 8."""
    from transferkit.trainer import beats_start

    rows = lambda losses: [{"val_loss": v} for v in losses]  # noqa: E731
    digits_loss, digits_probe_min = [0.265, 0.214, 0.227], 0.275
    assert beats_start(rows(digits_loss[:1]), False, digits_probe_min)
    hym_loss, hym_probe_min = [0.194, 0.186, 0.179, 0.185, 0.186, 0.175, 0.172, 0.172], 0.159
    assert not beats_start(rows(hym_loss), False, hym_probe_min)
    assert beats_start(rows(hym_loss), True, hym_probe_min)  # a better accuracy is enough
    assert not beats_start(rows([0.3]), False, None)  # nothing to compare the loss with: accuracy alone
    assert not beats_start(rows([0.159]), False, 0.159)  # equal is not better


@pytest.mark.parametrize("arch", ["mobilenetv3_small_050", "resnet10t"])
def test_timm_backbone_width_is_what_forward_returns(arch):
    """MobileNetV3 projects its pooled map (576) to 1024 before the classifier: the head must take what
    the backbone returns, or every fit of such a model fails on a shape mismatch."""
    import torch

    from transferkit.config import ModelConfig
    from transferkit.model import create_model

    m = create_model(ModelConfig(name=f"random:{arch}"), 3).eval()
    x = torch.randn(2, 3, 64, 64)
    assert m.backbone(x).shape == (2, m.backbone.num_features) and m(x).shape == (2, 3)


def test_small_convnet_takes_any_input_size_and_is_unchanged_at_its_own():
    """Its dense layer was sized for 16 px, so `--input-size 32` failed on the first batch (a shape
    traceback); the map is now averaged onto the 16 px grid, which is the identity at 16 px."""
    import torch

    from transferkit.backbones import create_backbone

    bb = create_backbone("small_convnet").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), bb.dense(bb.conv2(bb.conv1(x))), rtol=0, atol=0)
        for size in (8, 32, 57):
            assert bb(torch.randn(2, 3, size, size)).shape == (2, bb.num_features)


def test_min_delta_is_not_bypassed_by_a_tie_with_a_lower_loss():
    """An equal accuracy with a lower loss counted as an improvement whatever --min-delta said, so
    ties kept resetting --patience (patience 2, min_delta 0.5 ran 5 epochs, not 3)."""
    from transferkit.trainer import is_better

    best = {"accuracy": 0.90, "loss": 0.50}
    tie_lower_loss = {"accuracy": 0.90, "loss": 0.4999}
    assert is_better(tie_lower_loss, best, "accuracy", 0.0)  # no min_delta: the tie-break by loss stays
    assert not is_better(tie_lower_loss, best, "accuracy", 0.05)
    assert not is_better({"accuracy": 0.94, "loss": 0.40}, best, "accuracy", 0.05)
    assert is_better({"accuracy": 0.96, "loss": 0.60}, best, "accuracy", 0.05)


@pytest.mark.parametrize("strategy", ["linear_probe", "lp_ft"])
def test_freeze_holds_a_head_parameter_in_the_probe_too(strategy, monkeypatch):
    """--freeze is "frozen throughout": a head parameter it names moved on every probe step."""
    import transferkit.trainer as T
    from transferkit import ImageClassifier

    start = {}

    class Spy(T.Penalty):  # built as each phase starts, with its parameters: the probe's head as it starts
        def __init__(self, cfg, named, **kw):
            for n, p in named:
                start.setdefault(n, p.detach().clone())
            super().__init__(cfg, named, **kw)

    monkeypatch.setattr(T, "Penalty", Spy)
    epochs = {} if strategy == "linear_probe" else {"epochs": 1}  # linear_probe trains lp_epochs only (and warns of epochs)
    clf = ImageClassifier(model="small_convnet", strategy=strategy, lp_epochs=3, freeze=[r"head\.0\.bias"], calibrate="none", **epochs)
    clf.fit("digits:3,8", quiet=True)
    head = clf.model_.head[0]
    assert torch.equal(head.bias.detach(), start["head.0.bias"])
    assert not torch.equal(head.weight.detach(), start["head.0.weight"])  # the rest of the head trained
    with pytest.raises(UserError, match="freezes every parameter that phase .*probe would train"):  # was backward's RuntimeError
        ImageClassifier(model="small_convnet", strategy=strategy, lp_epochs=1, freeze=["head"], **epochs).fit("digits:3,8", quiet=True)


def test_a_vit_keeps_timm_no_weight_decay_parameters_out_of_decay():
    """timm's rule is "fewer than 2 dimensions, or named by no_weight_decay()": a ViT's pos_embed and
    cls_token (3-d) were decayed."""
    from transferkit.config import ModelConfig
    from transferkit.model import create_model

    m = create_model(ModelConfig(name="random:timm:test_vit"), 2)
    pg = build_param_groups(model_groups(m), 0.05)
    name_of = {id(p): n for n, p in m.named_parameters()}
    decayed = {name_of[id(p)] for g in pg if g["weight_decay"] > 0 for p in g["params"]}
    exempt = {f"backbone.model.{n}" for n in m.backbone.model.no_weight_decay()} & set(name_of.values())
    assert exempt and not exempt & decayed, exempt & decayed
    assert any(n.endswith("qkv.weight") for n in decayed)
    ids = [id(p) for g in pg for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters())  # still every parameter once


def test_lora_on_a_named_stem_layer_keeps_every_parameter_in_one_group_and_leftovers_out_of_lora():
    """--lora-targets conv1 on a CIFAR ResNet: its stem's weight moves to conv1.base_layer.weight,
    which the group lookup did not know (a KeyError). A parameter no block group names trains with
    the top block, never in the lora group that strategy lora trains."""
    from transferkit.lora import apply_lora

    m = _model()
    cfg = replace(RunConfig(), model="random:cifar_resnet8", strategy="lora", lora_targets="conv1", lora_r=2)
    assert apply_lora(m.backbone, cfg.strategy)
    groups = model_groups(m)
    names = [n for g in groups for n, _ in g.params]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters()) and len(names) == len(set(names))
    by = {g.name: [n for n, _ in g.params] for g in groups}
    assert "backbone.conv1.base_layer.weight" in by["stem"]
    assert by["lora"] and all(".lora_" in n for n in by["lora"])
    m.backbone.extra = torch.nn.Linear(2, 2)  # a parameter no block group names
    by = {g.name: [n for n, _ in g.params] for g in model_groups(m)}
    assert all(".lora_" in n for n in by["lora"]) and "backbone.extra.weight" in by[[g for g in by if g not in ("lora", "head")][-1]]


def test_a_diverged_phase_ends_at_once_and_keeps_finite_weights_or_says_why_it_cannot(tmp_path, capsys):
    """--lr 1e5 on a probe: the loss turns NaN and the run died in scikit-learn's metrics with a
    traceback ("Input contains NaN"). Now an epoch whose loss is not finite is never the best one and
    ends its phase; a phase with nothing finite to keep is a user error naming the rate."""
    import json

    from transferkit.cli import main

    out = tmp_path / "probe"
    rc = main(["fit", "--data", "digits", "--model", "small_convnet", "--strategy", "linear_probe", "--lr", "1e5", "--out", str(out)])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "training diverged in phase probe: epoch 1's loss is nan" in err and "at a learning rate of 1e+05" in err, err
    assert not (out / "manifest.json").exists()
    out = tmp_path / "lpft"  # a probe that stays finite, then fine-tuning at 1e3 that does not
    rc = main(["fit", "--data", "digits:3,8", "--model", "small_convnet", "--strategy", "lp_ft", "--lr", "1e4", "--lp-epochs", "1",
               "--epochs", "4", "--out", str(out)])
    cap = capsys.readouterr()
    err = " ".join((cap.out + cap.err).split())
    m = json.loads((out / "metrics.json").read_text())
    import csv

    losses = [float(r["train_loss"]) for r in csv.DictReader((out / "history.csv").open())]
    assert rc == 0 and len(losses) < 5 and m["best_epoch"] == 1, losses  # it ended at the first NaN
    assert not np.isfinite(losses[-1]) and np.isfinite(losses[:-1]).all()
    assert "phase 2 (finetune): diverged in epoch" in err and "is too high, and it ended there" in err
    assert m["accuracy"] > 0.5  # the probe's weights, not NaN's argmax


def test_lora_refuses_grouped_convolutions_by_name_and_does_not_list_them():
    """--lora-targets conv_dw on EfficientNet (depthwise, groups = channels) was a PEFT ValueError
    traceback (the rank must be a multiple of the groups, and such adapters cannot be merged), and the
    error listing adaptable names offered conv_dw."""
    from types import SimpleNamespace

    from transferkit.lora import apply_lora

    net = torch.nn.Sequential()
    net.add_module("conv_dw", torch.nn.Conv2d(8, 8, 3, groups=8))
    net.add_module("conv_pw", torch.nn.Conv2d(8, 16, 1))
    backbone = SimpleNamespace(model=net, spec={"name": "tiny"})
    with pytest.raises(UserError, match=r"'conv_dw' names grouped convolutions \(conv_dw: groups=8, a depthwise convolution\).*adapted: conv_pw$"):
        apply_lora(backbone, replace(RunConfig(), strategy="lora", lora_targets="conv_dw", lora_r=2).strategy)
    with pytest.raises(UserError, match=r"needs --lora-targets for this backbone; module names that can be adapted: conv_pw$"):
        apply_lora(backbone, replace(RunConfig(), strategy="lora", lora_r=2).strategy)
    assert apply_lora(backbone, replace(RunConfig(), strategy="lora", lora_targets="conv_pw", lora_r=2).strategy) == ["conv_pw"]
    # one short name over grouped and plain layers (RegNet's `conv`): the refused name was the only one offered
    net = torch.nn.Sequential()
    net.add_module("a", torch.nn.Sequential())
    net.a.add_module("conv", torch.nn.Conv2d(8, 8, 3, groups=2))
    net.add_module("b", torch.nn.Sequential())
    net.b.add_module("conv", torch.nn.Conv2d(8, 16, 1))
    backbone = SimpleNamespace(model=net, spec={"name": "tiny"})
    with pytest.raises(UserError, match=r"\(a.conv: groups=2, a grouped convolution\).*adapted: b.conv$"):
        apply_lora(backbone, replace(RunConfig(), strategy="lora", lora_targets="conv", lora_r=2).strategy)


def test_gradual_says_when_groups_never_unfreeze_or_only_the_head_trains(tmp_path, capsys):
    """gradual with --epochs <= --unfreeze-every trained the head alone, a slow linear probe named
    gradual, without a word; with fewer epochs than groups the bottom groups never train, and the plan
    now names them."""
    from transferkit.cli import main

    base = ["fit", "--data", "digits:3,8", "--model", "small_convnet", "--strategy", "gradual"]
    assert main([*base, "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "gradual unfreezes its first backbone group at epoch 2, and this run has 1 epoch: only the head trains" in said
    assert any("only the head trains" in n for n in json.loads((tmp_path / "a" / "metrics.json").read_text())["data_notes"])
    assert main([*base, "--epochs", "3", "--out", str(tmp_path / "b")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "only the head trains" not in said
    assert "1/4 groups train at epoch 1, 3 by epoch 3 (conv1 never unfreezes), 3 epochs" in said, said


def test_timm_block_groups_are_named_by_what_they_hold():
    """timm numbers its coarse groups (group0 ... group7 on EfficientNet-Lite0), which said nothing
    of what --k or the plan's table trains; they are named by their modules now."""
    from transferkit.backbones.base import group_label
    from transferkit.config import ModelConfig
    from transferkit.model import create_model

    m = create_model(ModelConfig(name="efficientnet_lite0"), 2, pretrained=False)
    assert [g.name for g in model_groups(m)] == ["conv_stem+bn1", *[f"blocks.{i}" for i in range(6)], "blocks.6+conv_head+bn2", "head"]
    every = ["stem.w", "layer1.0.a.w", "layer1.1.a.w", "layer2.0.a.w", "layer2.1.a.w", "layer2.2.a.w", "layer2.3.a.w", "norm.w"]
    assert group_label(["layer1.0.a.w", "layer1.1.a.w"], every) == "layer1"  # the whole container
    assert group_label(["layer2.0.a.w", "layer2.1.a.w", "layer2.3.a.w", "norm.w"], every) == "layer2.0-1,3+norm"
    import timm

    from transferkit.backbones.base import TimmBackbone

    convnext = TimmBackbone(timm.create_model("convnext_atto", pretrained=False, num_classes=0), preprocess=None, weights_id="x", spec={})
    assert [g for g, _ in convnext.block_groups()][-1] == "head.norm"  # timm's own head.norm, not our head (it was group5)


def test_a_group_freeze_holds_whole_is_not_counted_as_training_in_the_plan(tmp_path, capsys):
    """QA AG: "9/9 groups train" and a rate in the table for a group --freeze held whole."""
    from transferkit.cli import main

    assert main(["fit", "--data", "digits:3,8", "--model", "small_convnet", "--strategy", "full", "--epochs", "1", "--freeze", r"conv1\.",
                 "--calibrate", "none", "--out", str(tmp_path / "r")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "3/4 groups train at epoch 1" in out and "│ conv1 │ 896 │ 1 │ frozen (--freeze) │" in out, out


def test_lr_csv_gives_the_rate_of_the_lowest_group_that_trains(tmp_path, capsys):
    """lr.csv's second rate is the lowest trained group's: it was the stem's, which partial and gradual
    keep frozen, so the column showed a rate no parameter trained at."""
    import csv

    from conftest import make_folder, tiny_args
    from transferkit.cli import main

    d = make_folder(tmp_path / "d", n=4)
    common = [*tiny_args(_ckpt(tmp_path)), "--lr", "1e-2", "--layer-decay", "0.5", "--schedule", "constant", "--warmup-epochs", "0", "--baseline", "none"]

    def rates(strategy, *extra):
        out = tmp_path / strategy
        assert main(["fit", "--data", str(d), *common, "--strategy", strategy, *extra, "--out", str(out)]) == 0, capsys.readouterr().err
        return [(float(r["head_lr"]), float(r["lowest_trained_lr"])) for r in csv.DictReader((out / "lr.csv").open())]

    # 4 backbone groups at 0.5**4 ... 0.5, the head at 1: partial k=2 trains the top two
    got = rates("partial", "--k", "2", "--epochs", "1")
    assert got and all(r == (1e-2, pytest.approx(1e-2 * 0.5**2)) for r in got)
    per_epoch = rates("gradual", "--unfreeze-every", "1", "--epochs", "3")  # head alone, then one more group an epoch
    n = len(per_epoch) // 3
    assert [r[1] for r in per_epoch[::n]] == [pytest.approx(1e-2), pytest.approx(5e-3), pytest.approx(2.5e-3)]
