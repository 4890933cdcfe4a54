"""Reading weight files safely, and fitting them onto an architecture with clear errors.

Nothing here unpickles arbitrary objects: `.safetensors` is read with safetensors, and every torch
file goes through `torch.load(..., weights_only=True)`, which refuses pickles that would run code.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .base import strip_prefix

TORCH_SUFFIXES = (".pt", ".pth", ".th", ".bin", ".ckpt")


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a .safetensors or torch checkpoint file.

    Torch files may hold the state dict itself or wrap it as `{"state_dict": ...}` / `{"model": ...}`
    (the layouts of most training scripts); `module.` prefixes are stripped.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint file not found: {p}")
    if p.suffix.lower() == ".safetensors" or _looks_like_safetensors(p):  # a .safetensors file renamed .ckpt is still one
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"cannot read {p} as safetensors: {e}") from None
    elif p.suffix.lower() in TORCH_SUFFIXES or p.name.lower().endswith(".pth.tar"):  # (any case: model.PT) timm's train.py writes model_best.pth.tar
        import argparse
        import pickle
        import re
        import warnings

        try:
            # argparse.Namespace: the `args` a training script (timm's train.py) saves beside the weights; it
            # rebuilds as a plain bag of attributes, each still checked by the weights-only unpickler
            allow = getattr(torch.serialization, "safe_globals", None)  # torch 2.5+; 2.4 has the global add_safe_globals only
            if allow is None:
                torch.serialization.add_safe_globals([argparse.Namespace])
            with warnings.catch_warnings(), (allow([argparse.Namespace]) if allow is not None else contextlib.nullcontext()):
                warnings.simplefilter("ignore")  # torch's "Detected pickle protocol" notes: the message below says what matters
                obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            named = re.search(r"GLOBAL ([\w.]+)", str(e))  # "Unsupported global: GLOBAL x.y", "unsupported GLOBAL x.y whose module"
            if named is None and _plain_pickle(p):  # pickle.dump's file: it was called "damaged"
                raise UserError(f"refusing to load {p}: it is a plain Python pickle, not a PyTorch checkpoint, and unpickling it can run code. "
                                "Save the weights as tensors: torch.save(model.state_dict(), 'weights.pt'), or safetensors' save_file") from None
            if named is None:  # not a pickle of known types at all: junk, or a damaged file
                why = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
                raise UserError(f"cannot read {p}: it is not a PyTorch checkpoint, or it is damaged ({(why.group(1) if why else str(e).splitlines()[0])[:120]})") from None
            raise UserError(
                f"refusing to load {p}: it holds Python objects besides tensors ({named.group(1)}), such as a whole pickled model, "
                "and unpickling those can run code. Re-save its weights as tensors: torch.save(model.state_dict(), 'weights.pt'), "
                "or safetensors' save_file"
            ) from None
        except Exception as e:  # a truncated zip, a file of another format
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot read {p}: it is not a PyTorch checkpoint, or it is damaged ({first})") from None
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            hint = ""
            if isinstance(obj, dict):  # name what it holds, and the entry that looks like the weights ({'net': ...}, {'state_dict_ema': ...})
                keys = [str(k) for k in obj]
                inner = next((k for k, v in obj.items() if isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values())), None)
                hint = f" (its entries: {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}" + (
                    f"; the tensors look to be under {inner!r}: torch.save(torch.load(FILE)[{inner!r}], 'weights.pt')" if inner is not None else "") + ")"
            raise UserError(f"{p} does not hold a state dict of tensors{hint}")
        sd = dict(obj)
    else:
        raise UserError(
            f"unsupported checkpoint type {p.suffix!r} for {p}: use .safetensors or one of {', '.join(TORCH_SUFFIXES)}"
        )
    return strip_prefix(sd)


def _plain_pickle(p: Path) -> bool:
    """A pickle (protocol 2 or later) that is neither torch's zip format nor its legacy one (whose
    first pickle is torch's magic number, 0x1950a86a20f9469cfc6c)."""
    try:
        with open(p, "rb") as f:
            head = f.read(6)
    except OSError:
        return False
    return head[:1] == b"\x80" and head[2:6] != b"\x8a\x0a\x6c\xfc"


def _looks_like_safetensors(p: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    try:
        with open(p, "rb") as f:
            head = f.read(9)
        return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < p.stat().st_size
    except OSError:
        return False


def fit_state_dict(
    module: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str, drop_prefixes: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Load `state_dict` into `module`, strictly. Keys under `drop_prefixes` (the source classifier)
    may be present in the file and are dropped, and returned with their tensors.

    Missing keys, unexpected keys and shape mismatches raise a UserError naming the first few.
    """
    own = module.state_dict()
    if state_dict and not any(k in own for k in state_dict) and all(k.startswith("model.") for k in state_dict):
        state_dict = {k[len("model."):]: v for k, v in state_dict.items()}  # a PyTorch Lightning module's `self.model`
    dropped = [k for k in state_dict if k not in own and k.startswith(drop_prefixes)]
    sd = {k: v for k, v in state_dict.items() if k not in dropped}
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    problems = []
    if mismatched:
        problems.append("shape mismatch " + "; ".join(mismatched[:3]))
    if missing:
        problems.append(f"{len(missing)} missing keys, first: {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, first: {', '.join(unexpected[:3])}")
    if problems:
        raise UserError(f"the tensors in {source} do not fit the architecture: " + " | ".join(problems))
    module.load_state_dict(sd, strict=False)
    return {k: state_dict[k] for k in dropped}  # by the names they have here (a Lightning file's model. prefix stripped)
