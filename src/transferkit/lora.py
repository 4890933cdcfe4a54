"""LoRA (Hu et al. 2021) through PEFT: low-rank adapters injected into the named modules of a
backbone, which itself stays frozen; after training they are merged back into the weights, so a saved
run is a plain backbone that loads without PEFT.

PEFT is asked to adapt exactly the modules named; a name that matches no module is an error here
(PEFT itself may accept it silently, peft#1959), and the message lists the names that would match.
"""

from __future__ import annotations

from torch import nn

from .errors import UserError

ADAPTABLE = (nn.Linear, nn.Conv2d, nn.Embedding)
DEFAULT_TARGETS = {"text": ["query", "value"]}  # BERT-family attention projections (the LoRA paper's choice)


def _short_names(module: nn.Module) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules() if n and isinstance(m, ADAPTABLE)})


def apply_lora(backbone, cfg) -> list[str]:
    """Inject adapters into `backbone.model` as `cfg` (StrategyConfig) says; return the adapted module names."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(cfg.lora_targets) or DEFAULT_TARGETS.get(getattr(backbone, "modality", "image"), [])
    inner = backbone.model if hasattr(backbone, "model") else backbone
    available = _short_names(inner)
    if not targets:
        raise UserError(f"strategy lora needs --lora-targets for this backbone; module names that can be adapted: {', '.join(available[:30])}")
    names = [n for n, m in inner.named_modules() if n and isinstance(m, ADAPTABLE)]
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in names):
            raise UserError(f"--lora-targets {t!r} matches no module of {backbone.spec.get('name')}; names that match: {', '.join(available[:30])}")
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets, bias="none")
    inject_adapter_in_model(config, inner)
    adapted = [n for n, m in inner.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    if not adapted:  # pragma: no cover - guarded above
        raise UserError(f"LoRA adapted no module for targets {targets}")
    return adapted


def merge_lora(backbone) -> int:
    """Fold every adapter into its base weight and put the plain layer back; returns how many."""
    inner = backbone.model if hasattr(backbone, "model") else backbone
    merged = 0
    for name, m in list(inner.named_modules()):
        if hasattr(m, "lora_A") and hasattr(m, "base_layer") and hasattr(m, "merge"):
            m.merge()
            parent = inner.get_submodule(name.rsplit(".", 1)[0]) if "." in name else inner
            setattr(parent, name.rsplit(".", 1)[-1], m.get_base_layer())
            merged += 1
    return merged
