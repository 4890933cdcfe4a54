"""Mistakes: the wrong validation examples, most confidently wrong first, and Grad-CAM maps that point
where the evidence for a class is."""

import csv
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_text_csv, tiny_args, tiny_text_args
from transferkit.cli import main
from transferkit.mistakes import gradcam, top_mistakes


def test_top_mistakes_are_the_wrong_ones_most_confident_first():
    y = np.array([0, 1, 1, 0, 2, 2, 2])
    p = np.array([[0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.05, 0.9, 0.05], [0.5, 0.5, 0.0], [0.4, 0.6, 0.0]])
    rows = top_mistakes(y, p, ["a", "b", "c"], sources=[f"f{i}" for i in range(7)])
    # wrong: 1 (said 0.7), 3 (0.5, p_true 0.2), 4 (0.9), 5 (0.5, p_true 0), 6 (0.6): the class said the most
    # probable first (by loss alone, 6 at 0.6 came before 1 at 0.7 and was printed as "the most confident");
    # ties by loss (5 before 3)
    assert [r["index"] for r in rows] == [4, 1, 6, 5, 3]
    assert rows[0] == {"index": 4, "source": "f4", "true": "c", "predicted": "b", "p_predicted": 0.9, "p_true": 0.05}
    assert top_mistakes(y[[0, 2]], p[[0, 2]], ["a", "b", "c"]) == []


def test_word_evidence_weighs_each_word_by_leaving_it_out():
    """A known model: p(pos) = sigmoid(2 (#good - #bad)). 'good' argues for pos, 'bad' against, other
    words not at all; each weight is exactly p(text) - p(text without the word)."""
    from transferkit.mistakes import word_evidence

    def proba(texts):
        z = np.array([2.0 * (t.split().count("good") - t.split().count("bad")) for t in texts])
        p = 1 / (1 + np.exp(-z))
        return np.stack([1 - p, p], 1)

    (ev,) = word_evidence(proba, ["the good film was bad good"], [1])
    weights = dict(zip(["the", "good1", "film", "was", "bad", "good2"], [d for _, d in ev]))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    assert [w for w, _ in ev] == "the good film was bad good".split()
    assert weights["the"] == weights["film"] == weights["was"] == 0.0
    assert weights["good1"] == weights["good2"] == pytest.approx(sig(2) - sig(0), abs=1e-4)
    assert weights["bad"] == pytest.approx(sig(2) - sig(4), abs=1e-4) and weights["bad"] < 0
    (neg,) = word_evidence(proba, ["bad"], [0])  # toward class 0; leaving the only word out leaves ""
    assert neg == [("bad", pytest.approx(sig(2) - 0.5, abs=1e-4))]


class _Spatial(nn.Module):
    """A 'backbone': a fixed 1x1 convolution summing the channels (a 4-D map), ReLU, global mean."""

    num_features = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.ones_(self.conv.weight)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)).mean((2, 3))


class _Model(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(1, 2)
        with torch.no_grad():  # class 1 grows with the feature, class 0 falls
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.backbone(x))


def test_gradcam_points_at_the_evidence():
    """A bright square in one corner is all the evidence for class 1: its Grad-CAM map is there and
    nowhere else; class 0 has no positive evidence anywhere, so its map is zero."""
    x = torch.zeros(2, 3, 16, 16)
    x[0, :, :6, :6] = 1.0  # top left
    x[1, :, 10:, 10:] = 1.0  # bottom right
    model = _Model(_Spatial())
    cam = gradcam(model, x, torch.tensor([1, 1]))
    assert cam.shape == (2, 16, 16) and float(cam.max()) == pytest.approx(1.0)
    assert cam[0, :6, :6].sum() > 0.9 * cam[0].sum() and cam[1, 10:, 10:].sum() > 0.9 * cam[1].sum()
    assert float(gradcam(model, x, torch.tensor([0, 0])).abs().max()) == 0.0
    assert all(p.grad is None for p in model.parameters())  # nothing left behind for an optimizer


def test_gradcam_is_cam_on_a_real_global_average_pooled_network():
    """For a CNN whose last map is average-pooled into a linear head (ResNet-18 here), the gradient is
    the same at every position, so Grad-CAM equals the class activation map relu(sum_c w_tc A_c)
    (Selvaraju et al. 2017, section 3.1): this checks the layer found and its weighting."""
    from transferkit.backbones import create_backbone
    from transferkit.model import TransferModel

    torch.manual_seed(0)
    bb = create_backbone("random:tv:resnet18")
    model = TransferModel(bb, nn.Linear(bb.num_features, 3)).eval()
    x, t = torch.randn(2, 3, 96, 96), torch.tensor([2, 0])
    seen = []
    h = bb.model.layer4.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    ref = torch.relu(torch.einsum("bc,bchw->bhw", model.head.weight[t], seen[0]))[:, None]
    ref = nn.functional.interpolate(ref, size=(96, 96), mode="bilinear", align_corners=False)[:, 0]
    ref = ref / ref.flatten(1).amax(1).view(-1, 1, 1)
    torch.testing.assert_close(gradcam(model, x, t), ref, atol=1e-4, rtol=1e-4)
    assert not model.training


class _Tokens(nn.Module):
    """A toy transformer: 4x4 patches embedded as tokens, one token-wise layer, mean-pooled."""

    num_features = 8

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.mix = nn.Linear(8, 8)

    def forward(self, x):
        return self.mix(self.patch(x).flatten(2).transpose(1, 2)).mean(1)


def _reference_cam(model, layer, x, t, to_nchw):
    """Grad-CAM by hand on one named layer (pytorch-grad-cam's way: a hook, a reshape, the weighted sum)."""
    seen = []
    h = layer.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.enable_grad():
        logits = model(x)
        (g,) = torch.autograd.grad(logits.gather(1, t.view(-1, 1)).sum(), seen[0])
    h.remove()
    a, g = to_nchw(seen[0].detach()), to_nchw(g)
    cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam / cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)


def test_gradcam_reads_a_token_backbone_on_its_grid_of_patch_tokens():
    torch.manual_seed(0)
    m = _Model(_Tokens())
    m.head = nn.Linear(8, 2)
    x, t = torch.rand(2, 3, 16, 16), torch.tensor([0, 1])
    ref = _reference_cam(m, m.backbone.mix, x, t, lambda o: o.reshape(2, 4, 4, 8).permute(0, 3, 1, 2))
    torch.testing.assert_close(gradcam(m, x, t), ref, atol=1e-5, rtol=1e-5)


def _vit_last_block_input(bb):
    return bb.model.blocks[-1].norm1, lambda o: o[:, bb.model.num_prefix_tokens:].reshape(len(o), 14, 14, -1).permute(0, 3, 1, 2)


def _tv_vit_last_block_input(bb):
    return bb.model.encoder.layers[-1].ln_1, lambda o: o[:, 1:].reshape(len(o), 14, 14, -1).permute(0, 3, 1, 2)


def _swin_last_map(bb):
    return bb.model.norm, lambda o: o.permute(0, 3, 1, 2)  # timm's Swin keeps its maps channels-last


@pytest.mark.parametrize("name, where", [
    ("random:vit_tiny_patch16_224", _vit_last_block_input),  # class-token pooling
    ("random:deit_tiny_distilled_patch16_224", _vit_last_block_input),  # two prefix tokens
    ("random:tv:vit_b_16", _tv_vit_last_block_input),
    ("random:swin_tiny_patch4_window7_224", _swin_last_map),
])
def test_gradcam_on_vision_transformers_is_the_hand_written_recipe(name, where):
    """ViTs: on the last block's input tokens, the layer pytorch-grad-cam's ViT example names by hand
    (with class-token pooling nothing after the last attention carries a gradient to the patches);
    Swin: on its last map, channels-last. These backbones had no map before."""
    from transferkit.backbones import create_backbone
    from transferkit.model import TransferModel

    torch.manual_seed(0)
    bb = create_backbone(name)
    model = TransferModel(bb, nn.Linear(bb.num_features, 3)).eval()
    x, t = torch.randn(2, 3, 224, 224), torch.tensor([2, 0])
    layer, to_nchw = where(bb)
    ref = _reference_cam(model, layer, x, t, to_nchw)
    cam = gradcam(model, x, t)
    assert cam is not None and cam.shape == (2, 224, 224)
    torch.testing.assert_close(cam, ref, atol=1e-4, rtol=1e-4)
    assert float(cam.std()) > 0.01  # a map, not a constant


def test_gradcam_without_a_grid_gives_no_map():
    """Tokens that are no square grid (7 of them) have no place in the image: no map rather than a wrong one."""

    class Seven(_Tokens):
        def forward(self, x):
            return self.mix(self.patch(x).flatten(2).transpose(1, 2)[:, :7]).mean(1)

    m = _Model(Seven())
    m.head = nn.Linear(8, 2)
    assert gradcam(m, torch.rand(2, 3, 16, 16), torch.tensor([0, 1])) is None


def test_explain_halves_its_batch_when_out_of_memory(monkeypatch):
    from transferkit import mistakes

    torch.manual_seed(0)
    m = _Model(_Tokens())
    m.head = nn.Linear(8, 2)
    x_u8 = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    target = [0, 1, 1, 0, 1]
    crops, whole, _ = mistakes.explain(m, x_u8, target, 16, lambda x: x.float() / 255, "cpu")
    real, sizes = mistakes.gradcam, []

    def small_memory(model, x, t):
        sizes.append(len(x))
        if len(x) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (fake, from the test)")
        return real(model, x, t)

    monkeypatch.setattr(mistakes, "gradcam", small_memory)
    _, halved, note = mistakes.explain(m, x_u8, target, 16, lambda x: x.float() / 255, "cpu", batch_size=8)
    assert sizes == [5, 2, 2, 1] and note == ""
    np.testing.assert_allclose(halved, whole, atol=1e-6)


def _swapped_image_data(root):
    """train/ red and blue; val/ with the folders' images swapped: a model that learned train is wrong
    on val, so the run has mistakes to show."""
    from conftest import make_folder

    make_folder(root / "train", n=6)
    make_folder(root / "v", n=3, seed=1)
    (root / "val").mkdir()
    (root / "v" / "red").rename(root / "val" / "blue")
    (root / "v" / "blue").rename(root / "val" / "red")
    return root


def test_image_run_writes_its_mistakes(tmp_path, tiny_ckpt, capsys):
    from transferkit.api import ImageClassifier

    d = _swapped_image_data(tmp_path / "d")
    out = tmp_path / "run"
    assert main(["fit", "--data", str(d), *tiny_args(tiny_ckpt), "--strategy", "full", "--epochs", "3", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "mistakes.csv").open()))
    assert len(rows) == m["mistakes"]["count"] == round((1 - m["accuracy"]) * m["n_val"]) > 0
    proba = ImageClassifier.load(out).predict_proba([r["source"] for r in rows])
    classes = json.loads((out / "model.json").read_text())["classes"]
    for r, p in zip(rows, proba):  # each row is what the saved model says of that file, and it is wrong
        assert r["predicted"] == classes[p.argmax()] != r["true"] == r["source"].split("/")[-2]
        assert float(r["p_predicted"]) == pytest.approx(p.max(), abs=1e-4)
    losses = [-np.log(max(float(r["p_true"]), 1e-12)) for r in rows]
    assert losses == sorted(losses, reverse=True)
    assert (out / "mistakes.jpg").is_file()
    page = (out / "report.html").read_text()
    assert f"{len(rows)} of {m['n_val']} validation examples wrong" in page and 'alt="mistakes.jpg"' in page
    # `evaluate` on the same val/ split finds the same mistakes, in the same order
    assert main(["evaluate", str(out), "--data", str(d), "--mistakes", str(tmp_path / "e.csv")]) == 0
    again = list(csv.DictReader((tmp_path / "e.csv").open()))
    assert [(r["source"], r["predicted"]) for r in again] == [(r["source"], r["predicted"]) for r in rows]
    assert main(["evaluate", str(out), "--data", str(d), "--mistakes", str(tmp_path / "no" / "e.csv")]) == 2
    # predict --explain: one picture per image (the crop, and the crop under its map), same predictions
    from PIL import Image

    clf = ImageClassifier.load(out)
    files = sorted(str(f) for f in (d / "val").rglob("*.png"))
    proba, crops, maps = clf.explain(files)
    np.testing.assert_allclose(proba, clf.predict_proba(files), atol=1e-6)
    assert crops.shape == (len(files), 16, 16, 3) and maps.shape == (len(files), 16, 16) and 0 <= maps.min() and maps.max() <= 1
    assert main(["predict", str(out), str(d / "val"), "--explain", str(tmp_path / "cam"), "--out", str(tmp_path / "p.csv")]) == 0
    pics = sorted((tmp_path / "cam").iterdir())
    assert len(pics) == len(files) and Image.open(pics[0]).size == (16 + 6 + 16, 16 + 20)
    assert main(["predict", str(out), str(d / "val"), "--explain", str(tmp_path / "cam"), "--onnx"]) == 2
    capsys.readouterr()  # again into the same folder with one image: the earlier maps are said, not silently mixed in
    assert main(["predict", str(out), files[0], "--explain", str(tmp_path / "cam")]) == 0
    assert f"also holds {len(files) - 1} map(s) from an earlier --explain" in capsys.readouterr().err


def test_text_run_lists_its_mistakes(tmp_path, tiny_bert):
    d = tmp_path / "t"
    d.mkdir()
    make_text_csv(d / "train.csv")
    val = make_text_csv(tmp_path / "v.csv", n=4, seed=1).read_text().splitlines()
    swap = {"pos": "neg", "neg": "pos"}
    (d / "val.csv").write_text("\n".join([val[0]] + [t.rsplit(",", 1)[0] + "," + swap[t.rsplit(",", 1)[1]] for t in val[1:]]) + "\n")
    out = tmp_path / "run"
    assert main(["fit", "--data", str(d), *tiny_text_args(tiny_bert), "--strategy", "linear_probe", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "mistakes.csv").open()))
    assert len(rows) == m["mistakes"]["count"] > 0 and not (out / "mistakes.jpg").exists()
    assert all(r["source"].startswith("the movie was") and r["row"] for r in rows)
    page = (out / "report.html").read_text()
    assert "<th>said</th>" in page and "pushed the model toward the class it said" in page
    top = m["mistakes"]["most_confident"]
    assert len(top) == min(10, len(rows)) and all([w for w, _ in r["evidence"]] == r["source"].split() for r in top)
    assert sum("evidence" in r for r in top) == len(top) and any(d != 0 for r in top for _, d in r["evidence"])
    # predict --explain on texts: explain.html, every word of every text shaded
    assert main(["predict", str(out), "--text", "good film", "--text", "the plot was awful", "--text", "awful", "--explain", str(tmp_path / "why")]) == 0
    page = (tmp_path / "why" / "explain.html").read_text()
    assert page.count("<span title=") == 7 and "awful</span>" in page
    assert "<th>file</th><th>row</th>" in page and "<td>--text</td><td>3</td>" in page  # which input each row is (as the CSV says)
    from transferkit.api import TextClassifier

    proba, ev = TextClassifier.load(out).explain(["the plot was awful", "awful"])
    shown = [float(t) for t in re.findall(r"<span title='([^']+)'", page)]
    assert [d for _, d in ev[0] + ev[1]] == pytest.approx(shown[2:], abs=1e-3)  # the same weights as predict --explain


def test_images_given_in_memory_are_named_by_their_place_in_x(tmp_path, tiny_ckpt):
    """fit(X, y, out=...) with arrays: mistakes.csv and metrics.json named each wrong image by a
    temporary PNG file deleted when fit returned (/tmp/transferkit-data-.../images/000093.png)."""
    from transferkit import ImageClassifier

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    y = np.array([3, 7] * 12)
    clf = ImageClassifier(model=f"file:{tiny_ckpt}", arch="cifar_resnet20", input_size=16, batch_size=4, strategy="linear_probe", lp_epochs=1)
    clf.fit(X, y, out=tmp_path / "r")
    rows = list(csv.DictReader(open(tmp_path / "r" / "mistakes.csv")))
    assert rows, "random images and labels: some validation image is wrong"
    for r in rows:
        i = int(re.fullmatch(r"X\[(\d+)\]", r["source"]).group(1))
        assert r["true"] == str(y[i])  # the name points at the example
    assert "transferkit-data-" not in (tmp_path / "r" / "metrics.json").read_text()
    assert [m["source"] for m in clf.metrics_["mistakes"]["most_confident"]] == [r["source"] for r in rows][:10]
