"""torchvision models by name (`tv:NAME[.WEIGHTS]`): the top comes off, the weights load from torch's hub
cache without unpickling, preprocessing is the weights' own, every parameter is in exactly one block
group, and a torchvision checkpoint fine-tunes through `file:PATH --arch tv:NAME` and reloads.
No download: the hub cache is filled with random weights under the real file names (their sha256 is
taken to be the one the name carries; a file that fails that check is refused, tested below)."""

import json

import pytest
import torch
import torchvision

from conftest import make_folder
from transferkit.backbones import create_backbone
from transferkit.cli import main
from transferkit.errors import UserError


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TRANSFERKIT_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    import transferkit.backbones as B

    real = B.file_sha256
    monkeypatch.setattr(B, "file_sha256", lambda p: p.name.rsplit("-", 1)[1].split(".")[0] if p.parent == folder else real(p))
    return folder


def _fake_weights(hub, arch: str, tag: str = "DEFAULT"):
    enum = torchvision.models.get_model_weights(arch)
    w = enum.DEFAULT if tag == "DEFAULT" else enum[tag]
    torch.manual_seed(1)
    ref = torchvision.models.get_model(arch, weights=None)
    sd = ref.state_dict()
    torch.save(sd, hub / w.url.rsplit("/", 1)[1])
    return w, sd


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v3_small", "tv:vit_b_16", "tv:densenet121", "tv:inception_v3"])
def test_every_parameter_in_exactly_one_group_in_input_to_output_order(name):
    bb = create_backbone(f"random:{name}")
    groups = bb.block_groups()
    flat = [p for _, ps in groups for p in ps]
    assert sorted(flat) == sorted(n for n, _ in bb.named_parameters()) and len(flat) == len(set(flat))
    assert len(groups) >= 4
    order = [n for n, _ in bb.named_parameters()]
    firsts = [order.index(ps[-1]) for _, ps in groups]
    assert firsts == sorted(firsts)  # groups run from the input to the output
    assert not any(isinstance(m, torch.nn.Linear) and m.out_features == 1000 for m in bb.modules())  # the top is off


def test_pretrained_weights_load_from_the_hub_cache_with_the_top_off(hub):
    w, sd = _fake_weights(hub, "mobilenet_v3_small")
    bb = create_backbone("tv:mobilenet_v3_small")
    own = bb.model.state_dict()
    for k, v in own.items():
        torch.testing.assert_close(v, sd[k], msg=k)
    assert "classifier.3.weight" not in own and bb.num_features == sd["classifier.3.weight"].shape[1]
    torch.testing.assert_close(bb.source_head.weight, sd["classifier.3.weight"])  # the ImageNet classifier, for LEEP / NCE
    assert bb.weights_id.startswith(f"tv:mobilenet_v3_small.{w.name}:sha256:")
    t = w.transforms()
    p = bb.preprocess
    assert (p.input_size, p.resize_size, p.mean, p.interpolation) == (t.crop_size[0], t.resize_size[0], tuple(t.mean), "bilinear")
    bb.eval()
    with torch.no_grad():  # features are what fed the ImageNet classifier
        x = torch.randn(2, 3, 64, 64)
        ref = torchvision.models.mobilenet_v3_small()
        ref.load_state_dict(sd)
        ref.eval()
        torch.testing.assert_close(bb.source_head(bb(x)), ref(x), rtol=1e-4, atol=1e-4)


def test_named_weights_and_old_densenet_keys(hub):
    w, sd = _fake_weights(hub, "resnet50", "IMAGENET1K_V2")
    bb = create_backbone("tv:resnet50.IMAGENET1K_V2")
    assert "IMAGENET1K_V2" in bb.weights_id and bb.preprocess.resize_size == w.transforms().resize_size[0] == 232
    # torchvision's DenseNet files use the old names (`norm.1`); they load as torchvision loads them
    dw = torchvision.models.get_model_weights("densenet121").DEFAULT
    ref = torchvision.models.densenet121()
    import re

    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in ref.state_dict().items()
           if not k.endswith("num_batches_tracked")}  # as in the real (2017) files
    assert old.keys() != ref.state_dict().keys()
    torch.save(old, hub / dw.url.rsplit("/", 1)[1])
    bb = create_backbone("tv:densenet121")
    torch.testing.assert_close(bb.model.features.denseblock1.denselayer1.norm1.weight, ref.features.denseblock1.denselayer1.norm1.weight)


def test_clear_errors_offline_unknown_and_unsupported(hub, monkeypatch):
    import urllib.error

    def offline(url, *a, **k):
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match=r"could not download .*resnet18.*--arch tv:resnet18") as e:
        create_backbone("tv:resnet18")  # nothing in the cache and no internet
    assert str(hub) in str(e.value)
    with pytest.raises(UserError, match="did you mean: resnet18"):
        create_backbone("tv:resnet81")
    with pytest.raises(UserError, match="weights for resnet18 are IMAGENET1K_V1"):
        create_backbone("tv:resnet18.IMAGENET21K")
    with pytest.raises(UserError, match="ends in a convolution"):
        create_backbone("random:tv:squeezenet1_1")


def test_a_weights_file_whose_sha256_is_not_the_one_its_name_says_is_refused(tmp_path, monkeypatch):
    """A damaged or different file under the expected name (in TRANSFERKIT_WEIGHTS_DIR or the hub cache)
    was loaded as the pretrained weights: only downloads were checked."""
    from transferkit.backbones.cifar_resnet import CifarResNet

    torch.save({k: torch.zeros_like(v) for k, v in CifarResNet(20).state_dict().items()}, tmp_path / "resnet20-12fca82f.th")
    monkeypatch.setenv("TRANSFERKIT_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"resnet20-12fca82f.th is not the CIFAR-10 weights of cifar_resnet20: its sha256 does not begin with 12fca82f"):
        create_backbone("cifar_resnet20")


def test_a_torchvision_checkpoint_fine_tunes_and_reloads(tmp_path, capsys):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=7)  # the user's own earlier fine-tune: its fc has 7 classes
    ckpt = tmp_path / "mine.pth"
    torch.save(ref.state_dict(), ckpt)
    d = make_folder(tmp_path / "d", n=6, size=40)
    out = tmp_path / "run"
    rc = main(["fit", "--data", str(d), "--model", f"file:{ckpt}", "--arch", "tv:resnet18", "--input-size", "32", "--strategy", "partial",
               "--epochs", "1", "--batch-size", "8", "--quiet", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_train"] > 0 and json.loads((out / "model.json").read_text())["backbone"] == {"name": f"file:{ckpt}", "arch": "tv:resnet18"}
    rc = main(["evaluate", str(out), "--data", str(d), "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["n"] > 0
    from transferkit.fit import load_model

    model, _ = load_model(out)  # rebuilt from model.json without the checkpoint's fc
    assert not any(k.startswith("backbone.model.fc.") for k in model.state_dict())
