"""`transferkit adapt`: continue a pretrained backbone on the target domain before fine-tuning (step 2
of the transfer pipeline). The output is a run directory, so `fit --model run:DIR` fine-tunes it.

- Text: masked-language-model pretraining on unlabelled target texts (domain-adaptive pretraining,
  Gururangan et al. 2020), with transformers' own MLM head (`AutoModelForMaskedLM`) and
  `DataCollatorForLanguageModeling` (15% of tokens masked).
- Images: AdaBN (Li et al. 2016): every BatchNorm layer's running statistics re-estimated on the
  unlabelled target images (a cumulative average over one pass, in eval mode otherwise); nothing
  else changes. Optionally first a supervised intermediate task (`--intermediate FOLDER`): a normal
  `fit` on that labelled data, whose backbone is then adapted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import report
from .errors import UserError


def _image_sources(spec: str) -> list[str]:
    from .data import IMAGE_SUFFIXES

    p = Path(spec)
    if not p.exists():
        raise UserError(f"data not found: {spec}")
    files = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [str(p)]
    if not files:
        raise UserError(f"{spec}: no image files to adapt on")
    return files


def adabn(backbone: nn.Module, images_u8: torch.Tensor, transform, *, batch_size: int = 64) -> int:
    """Re-estimate every BatchNorm layer's running statistics on `images_u8`; returns how many layers."""
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    backbone.eval()
    saved = []
    for m in bns:
        saved.append(m.momentum)
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: exactly the mean over the batches seen
        m.train()
    with torch.no_grad():
        for i in range(0, len(images_u8), batch_size):
            backbone(transform(images_u8[i : i + batch_size]))
    for m, mom in zip(bns, saved):
        m.momentum = mom
        m.eval()
    return len(bns)


def mlm(backbone, texts: list[str], *, epochs: int = 1, lr: float = 5e-5, batch_size: int = 32, max_length: int = 128, seed: int = 0,
        mlm_probability: float = 0.15, console=None) -> dict:
    """Masked-language-model training of `backbone.model` (a transformers encoder) on `texts`."""
    from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

    con = console or report.console()
    torch.manual_seed(seed)
    try:
        model = AutoModelForMaskedLM.from_config(backbone.model.config)
    except ValueError as e:
        raise UserError(f"{backbone.spec.get('name')}: transformers has no masked-language-model head for this architecture ({e})") from None
    missing, unexpected = model.base_model.load_state_dict(backbone.model.state_dict(), strict=False)
    if unexpected or any("pooler" not in k for k in missing):
        raise UserError(f"could not place {backbone.spec.get('name')}'s encoder under an MLM head (missing {missing[:3]}, unexpected {unexpected[:3]})")
    tok = backbone.tokenizer
    if tok.mask_token is None:
        raise UserError(f"{backbone.spec.get('name')}'s tokenizer has no mask token: masked-language-model training needs one")
    enc = tok(texts, truncation=True, max_length=max_length, verbose=False)["input_ids"]
    collate = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=mlm_probability, return_tensors="pt")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(enc) + batch_size - 1) // batch_size)
    warm = max(1, steps // 16)
    step, losses, t0 = 0, [], time.perf_counter()
    with report.progress(con) as prog:
        task = prog.add_task("masked-LM pretraining", total=steps)
        for _ in range(epochs):
            order = torch.randperm(len(enc), generator=g).tolist()
            for i in range(0, len(order), batch_size):
                batch = collate([{"input_ids": enc[j]} for j in order[i : i + batch_size]])
                f = (step + 1) / warm if step < warm else max(0.0, (steps - step) / max(1, steps - warm))  # warmup, then linear decay
                for grp in opt.param_groups:
                    grp["lr"] = lr * f
                out = model(**batch)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                losses.append(float(out.loss.detach()))
                step += 1
                prog.update(task, advance=1, description=f"masked-LM loss {np.mean(losses[-20:]):.3f}")
    # the adapted encoder goes back into the backbone (same modules, new weights)
    backbone.model.load_state_dict(model.base_model.state_dict(), strict=False)
    return {"steps": step, "first_loss": float(np.mean(losses[:20])), "last_loss": float(np.mean(losses[-20:])), "seconds": round(time.perf_counter() - t0, 1), "texts": len(texts)}


def adapt(cfg, out: str | Path, *, intermediate: str | None = None, epochs: int = 1, console=None, overwrite: bool = False) -> dict:
    """Adapt `cfg.model.name` to the unlabelled data at `cfg.data.path`; write a run directory at `out`."""
    from .config import replace
    from .fit import write_model
    from .inputs import inputs_for, modality_of
    from .model import TransferModel, create_head
    from .rundir import RunDir

    con = console or report.console()
    cfg.validate()
    kind = modality_of(cfg.model.name)
    rundir = RunDir(out, overwrite=overwrite)
    t0 = time.perf_counter()
    info: dict = {"method": None, "source_model": cfg.model.name, "data": cfg.data.path}
    from .backbones import create_backbone

    if kind == "text":
        if intermediate:
            raise UserError("--intermediate (a supervised intermediate task) is for images; for text, fit on it and pass --model run:DIR")
        backbone = create_backbone(cfg.model.name, arch=cfg.model.arch)
        from .text_data import read_texts

        texts = read_texts(cfg.data.path, text_column=cfg.data.text_column)
        con.print(f"adapt: masked-language-model pretraining of {cfg.model.name} on {len(texts)} texts from {cfg.data.path}, {epochs} epoch(s)")
        info.update(method="mlm", **mlm(backbone, texts, epochs=epochs, lr=cfg.optim.lr or 5e-5, batch_size=cfg.train.batch_size,
                                        max_length=cfg.data.max_length, seed=cfg.train.seed, console=con))
        con.print(f"masked-LM loss {info['first_loss']:.3f} -> {info['last_loss']:.3f} over {info['steps']} steps")
    else:
        name = cfg.model.name
        if intermediate:
            from .fit import fit

            inter_dir = Path(out).with_name(Path(out).name + "-intermediate")
            con.print(f"adapt: supervised intermediate task on {intermediate} first ({inter_dir})")
            fit(replace(cfg, data=intermediate), inter_dir, overwrite=True, console=con)
            name = f"run:{inter_dir}"
            info["intermediate"] = {"data": intermediate, "run": str(inter_dir)}
        backbone = create_backbone(name, arch=cfg.model.arch)
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
        if not has_bn and not intermediate:
            raise UserError(
                f"{cfg.model.name} has no BatchNorm layers, so AdaBN has nothing to adapt; give --intermediate FOLDER "
                "(a labelled intermediate task) or fine-tune it directly"
            )
        from .data import ImageSet

        files = _image_sources(cfg.data.path)
        inputs = inputs_for(cfg, backbone)
        x, kept, bad = inputs.encode(ImageSet(files, np.zeros(len(files), int), ["unlabelled"]))
        n = adabn(backbone, x, inputs.eval_transform()) if has_bn else 0
        con.print(f"adapt: AdaBN re-estimated {n} BatchNorm layers on {len(kept)} target images from {cfg.data.path}")
        info.update(method="adabn" + ("+intermediate" if intermediate else ""), batchnorm_layers=n, images=len(kept), skipped=bad[:10])
        if not has_bn:
            info["method"] = "intermediate"
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    # The run directory of an adapted backbone: no classes of its own (a zero-output head), so `fit
    # --model run:DIR` always builds a new head.
    model = TransferModel(backbone, create_head("linear", backbone.num_features, 0))
    inputs = inputs_for(cfg, backbone)
    meta = {
        "format": "transferkit-model/1", "modality": kind, "backbone": backbone.spec, "weights_id": f"adapted:{backbone.weights_id}",
        "head": {"kind": "linear", "hidden": cfg.model.head_hidden, "dropout": 0.0}, "classes": [], "adapted": info, **inputs.meta(),
    }
    rundir.create()
    rundir.write_yaml("config.yaml", cfg.to_dict())
    write_model(rundir, model, meta)
    rundir.write_json("adapt.json", info)
    rundir.finalize()
    con.print(f"wrote {rundir.path}: fine-tune it with `transferkit fit --data TARGET --model run:{rundir.path}`")
    return json.loads(json.dumps(info))
