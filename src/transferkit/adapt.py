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
from .rundir import releases_lock_on_failure


def _image_sources(spec: str, model: str) -> list:
    """The unlabelled target images: a folder's image files (at any depth), one image file, or every
    image of `digits` / `digits:SUBSET` (as arrays)."""
    from .data import image_files, is_builtin, load_image_data
    from .text_data import TEXT_SUFFIXES

    if is_builtin(spec):
        s = load_image_data(spec)
        return list(s.train.sources) + list(s.val.sources)
    p = Path(spec)
    if not p.exists():
        raise UserError(f"data not found: {spec}")
    files = [str(f) for f in image_files(p)] if p.is_dir() else [str(p)]
    if (p.is_file() and p.suffix.lower() in TEXT_SUFFIXES) or (p.is_dir() and not files and any(p.glob("*.[ct]sv"))):
        raise UserError(f"{spec} looks like text data, and {model} is an image model; use a text model (minilm_l6, hf:NAME, dir:PATH)")
    if not files:
        raise UserError(f"{spec}: no image files to adapt on")
    return files


def adabn(backbone: nn.Module, images_u8: torch.Tensor, transform, *, batch_size: int = 64, device="cpu", should_stop=None) -> int:
    """Re-estimate every BatchNorm layer's running statistics on `images_u8` (in fp32, on `device`);
    returns how many layers. The images go in batches of nearly equal size (at most `batch_size`),
    as the cumulative average weighs every batch alike: 64 + 1 images gave the one image the weight
    of the 64 (QA: one image more cost 8 points on a hymenoptera subset). `should_stop()` is called before every
    batch (it may raise)."""
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
    backbone.to(device)
    with torch.no_grad():
        for idx in torch.arange(len(images_u8)).tensor_split(max(1, -(-len(images_u8) // batch_size))):
            if should_stop is not None:
                should_stop()
            backbone(transform(images_u8[idx].to(device, non_blocking=True)))
    for m, mom in zip(bns, saved):
        m.momentum = mom
        m.eval()
    return len(bns)


def _mlm_model(backbone):
    """`backbone`'s encoder under transformers' masked-LM head, and whether that head is new. The head
    the encoder was pretrained with is loaded from the backbone's source where it is there (a BERT or
    RoBERTa checkpoint); a sentence encoder such as all-MiniLM-L6-v2 was saved without one, so its head
    starts from random weights (the decoder is tied to the word embeddings, so only the transform
    layer and the output bias are new)."""
    from transformers import AutoModelForMaskedLM

    name = backbone.spec.get("name")
    if backbone.spec.get("encoder_only"):  # T5, BART: pretrained by denoising sequence to sequence, not masked-LM
        raise UserError(f"{name} is an encoder-decoder model: adapt continues masked-LM pretraining, which needs an encoder model (BERT, RoBERTa, DeBERTa, ...)")
    model, new_head = None, True
    if getattr(backbone, "source", None):
        try:
            model, info = AutoModelForMaskedLM.from_pretrained(backbone.source, config=backbone.model.config, output_loading_info=True)
            prefix = model.base_model_prefix + "."
            new_head = any(not k.startswith(prefix) for k in info["missing_keys"])
        except (OSError, ValueError):  # no head for this architecture, or no weights there: decided below
            model = None
    if model is None:
        try:
            model = AutoModelForMaskedLM.from_config(backbone.model.config)
        except ValueError as e:
            raise UserError(f"{name}: transformers has no masked-language-model head for this architecture ({e})") from None
    missing, unexpected = model.base_model.load_state_dict(backbone.model.state_dict(), strict=False)
    if unexpected or any("pooler" not in k for k in missing):
        raise UserError(f"could not place {name}'s encoder under an MLM head (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, new_head


HELDOUT_FROM = 200  # adapt holds out 5% of at least this many texts (at most 500) to score the masked-LM training


def mlm(backbone, texts: list[str], *, epochs: int = 1, lr: float = 5e-5, batch_size: int = 32, max_length: int = 128, seed: int = 0,
        mlm_probability: float = 0.15, head_steps: int | None = None, head_lr: float = 1e-3, console=None, accelerator=None,
        accumulate: int = 1, grad_checkpointing: bool = False, group_by_length: bool = False, heldout: list[str] | None = None,
        should_stop=None) -> dict:
    """Masked-language-model training of `backbone.model` (a transformers encoder) on `texts`, on the
    device and in the mixed precision of `accelerator` (None: `fit`'s default one, a GPU where there is
    one).

    As in `fit`, `accumulate` forwards each batch in that many micro-batches whose gradients add up to
    the batch's (each part's mean loss over its masked tokens counts by its share of the batch's masked
    tokens), and `grad_checkpointing` recomputes activations in the backward pass: less memory, the
    same steps. `group_by_length` draws batches of texts of similar length (`fit`'s option), which
    pad less. The logits over the whole vocabulary (batch x length x vocabulary) are the largest
    tensor this makes.

    `heldout` texts (not trained on) are masked once, and their masked-LM loss is computed before the
    encoder trains (after a new head's own steps) and after, in `info["heldout"]`: whether adaptation
    learned this text's language (a new head goes on learning in the main run too, so part of the
    gain may be the head's).

    A new (randomly initialised) head is first trained alone for `head_steps` steps (default: a
    quarter of the main run's steps) with the encoder frozen, as a linear probe comes before fine-
    tuning: otherwise the first updates of the encoder follow the gradients of a random head.

    `should_stop()` turning true (Ctrl-C, SIGTERM) stops it before the next step: StopRequested, with
    nothing kept (no checkpoint: an adapt run starts again)."""
    from transformers import DataCollatorForLanguageModeling

    from . import trainer

    con = console or report.console()
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise UserError(f"accumulate must be a whole number >= 1 (micro-batches a step), got {accumulate!r}")
    torch.manual_seed(seed)
    model, new_head = _mlm_model(backbone)
    if grad_checkpointing:
        from .backbones.text import hf_grad_checkpointing

        if not hf_grad_checkpointing(model):
            raise UserError(f"{backbone.spec.get('name')}: transformers has no gradient checkpointing for this architecture; use --accumulate")
    if accelerator is None:
        from .config import RunConfig
        from .fit import make_accelerator

        accelerator = make_accelerator(RunConfig())
    device = accelerator.device
    model.to(device)
    tok = backbone.tokenizer
    if tok.mask_token is None:
        raise UserError(f"{backbone.spec.get('name')}'s tokenizer has no mask token: masked-language-model training needs one")
    enc = tok(texts, truncation=True, max_length=max_length, verbose=False)["input_ids"]
    collate = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=mlm_probability, return_tensors="pt")
    g = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(enc) + batch_size - 1) // batch_size)
    if head_steps is None:
        head_steps = max(1, steps // 4) if new_head else 0

    lengths = torch.tensor([len(e) for e in enc]) if group_by_length else None

    def batches():  # shuffled passes over the texts, for as long as asked
        while True:
            order = torch.randperm(len(enc), generator=g)
            if lengths is not None:
                order = trainer.group_by_length(order, lengths, batch_size, g)
            order = order.tolist()
            for i in range(0, len(order), batch_size):
                yield collate([{"input_ids": enc[j]} for j in order[i : i + batch_size]])

    def backward(batch: dict) -> torch.Tensor:
        """The batch's loss; its gradients added up over `accumulate` micro-batches."""
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        masked = batch["labels"].ne(-100).sum()
        total = torch.zeros((), device=device)
        for values in zip(*(v.tensor_split(accumulate) for v in batch.values())):
            part = dict(zip(batch, values))
            share = part["labels"].ne(-100).sum() / masked
            # no masked token in this part (or an empty part of a batch split more ways than it has
            # texts): nothing to learn from, and its mean would be 0/0
            if not share:
                continue
            with accelerator.autocast():
                loss = model(**part).loss * share
            accelerator.backward(loss)
            total += loss.detach()
        return total

    def train(n: int, params: list, peak: float, label: str, prog) -> list[float]:
        opt = torch.optim.AdamW(params, lr=peak, weight_decay=0.01)
        opt = accelerator.prepare(opt)  # fp16: scaled loss, unscaled steps
        warm, losses = max(1, n // 16), []
        task = prog.add_task(label, total=n)
        for step, batch in zip(range(n), stream):
            if should_stop is not None and should_stop():
                raise trainer.StopRequested(checkpointed=False)
            prog.update(task, advance=1)
            if bool((batch["labels"] == -100).all()):  # no token drawn for masking (short texts, small batch): no loss to learn from
                continue
            f = (step + 1) / warm if step < warm else max(0.0, (n - step) / max(1, n - warm))  # warmup, then linear decay
            for grp in opt.param_groups:
                grp["lr"] = peak * f
            opt.zero_grad(set_to_none=True)
            loss = backward(batch)
            accelerator.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss))
            prog.update(task, description=f"{label}: loss {np.mean(losses[-20:]):.3f}")
        return losses

    held_batches = []
    if heldout:
        held_enc = sorted(tok(heldout, truncation=True, max_length=max_length, verbose=False)["input_ids"], key=len, reverse=True)
        with torch.random.fork_rng(devices=[]):  # the same masks before and after; the training draws unchanged
            torch.manual_seed(seed + 1)
            held_batches = [collate([{"input_ids": e} for e in held_enc[i : i + batch_size]]) for i in range(0, len(held_enc), batch_size)]

    @torch.no_grad()
    def heldout_loss() -> float | None:
        """The masked-LM loss over all masked tokens of the held-out texts (dropout off)."""
        if not held_batches:
            return None
        model.eval()
        total, count = torch.zeros((), device=device), 0
        for batch in held_batches:
            n = int(batch["labels"].ne(-100).sum())
            if n:
                with accelerator.autocast():
                    total += model(**{k: v.to(device) for k, v in batch.items()}).loss.float() * n
                count += n
        model.train()
        return float(total / count) if count else None

    stream = batches()
    model.train()
    encoder = list(model.base_model.parameters())
    in_encoder = {id(p_) for p_ in encoder}
    head = [p_ for p_ in model.parameters() if id(p_) not in in_encoder]  # the decoder tied to the word embeddings is the encoder's
    t0 = time.perf_counter()
    head_losses: list[float] = []
    with report.progress(con) as prog:
        if head_steps:
            for p_ in encoder:
                p_.requires_grad_(False)
            head_losses = train(head_steps, head, head_lr, "masked-LM head alone (encoder frozen)", prog)
            for p_ in encoder:
                p_.requires_grad_(True)
        before = heldout_loss()
        losses = train(steps, list(model.parameters()), lr, "masked-LM pretraining", prog)
        after = heldout_loss()
    # the adapted encoder goes back into the backbone (same modules, new weights)
    backbone.model.load_state_dict(model.base_model.state_dict(), strict=False)
    def ends(xs: list[float]) -> tuple[float | None, float | None]:
        """The mean loss of the first and of the last steps: 20 of each, or half the run, never the same steps."""
        k = max(1, min(20, len(xs) // 2))
        return (float(np.mean(xs[:k])), float(np.mean(xs[-k:]))) if xs else (None, None)

    first, last = ends(losses)
    info = {"steps": steps, "first_loss": first, "last_loss": last,
            "new_head": new_head, "head_steps": head_steps, "seconds": round(time.perf_counter() - t0, 1), "texts": len(texts)}
    if head_losses:
        info["head_first_loss"], info["head_last_loss"] = ends(head_losses)
    if before is not None:
        info["heldout"] = {"texts": len(heldout), "loss_before": before, "loss_after": after}
    return info


def _intermediate_to_resume(inter_dir: Path, cfg, overwrite: bool) -> bool:
    """Whether the intermediate fit resumes the interrupted run in `inter_dir` (one of the same data and
    model, stopped with this adapt); a finished or other run there is refused without --overwrite
    (it was written over in silence, a run the user had trained there too)."""
    import os

    from .config import absolute_model_name, load_config_file
    from .rundir import MANIFEST

    if overwrite or not inter_dir.is_dir():
        return False
    if (inter_dir / MANIFEST).is_file():
        raise UserError(f"adapt --intermediate writes its intermediate run to {inter_dir}, which holds a finished run: pass --overwrite "
                        "to replace it, or choose another --out")
    if not any((inter_dir / "checkpoints").glob("ckpt-*.pt")):
        return False
    try:
        was = load_config_file(inter_dir / "config.yaml")
    except UserError:
        was = None
    if was is not None and was.data.path == os.path.abspath(cfg.data.path) and was.model.name == absolute_model_name(cfg.model.name):
        return True
    raise UserError(f"adapt --intermediate writes its intermediate run to {inter_dir}, which holds an interrupted run of other data or "
                    "another model: pass --overwrite to start it over, or choose another --out")


@releases_lock_on_failure
def adapt(cfg, out: str | Path, *, intermediate: str | None = None, epochs: int = 1, head_steps: int | None = None, console=None,
          overwrite: bool = False, should_stop=None, adabn_batch_size: int = 64) -> dict:
    """Adapt `cfg.model.name` to the unlabelled data at `cfg.data.path`; write a run directory at `out`.
    `should_stop()` turning true (Ctrl-C, SIGTERM) stops it at the next step with StopRequested, `out`
    unwritten (an --intermediate fit stops as `fit` does, after a checkpoint, and starts again)."""
    from .config import replace
    from .fit import write_model
    from .inputs import inputs_for, modality_of
    from .model import TransferModel, create_head
    from .rundir import RunDir
    from .trainer import StopRequested

    con = console or report.console()
    cfg.validate()
    kind = modality_of(cfg.model.name)

    def stopped(*_a) -> None:  # encoding's progress callback and AdaBN's per-batch check
        if should_stop is not None and should_stop():
            raise StopRequested(checkpointed=False)

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"--epochs must be a whole number >= 1, got {epochs!r}")
    if head_steps is not None:
        if kind != "text":
            raise UserError("--head-steps warms up a masked-LM head, so it is for text models; AdaBN on images trains no head")
        if isinstance(head_steps, bool) or not isinstance(head_steps, int) or head_steps < 0:
            raise UserError(f"--head-steps must be a whole number >= 0, got {head_steps!r}")
    if kind == "text" and cfg.data.skip_bad_images:
        raise UserError("--skip-bad-images leaves out unreadable images, so it is for image models; a text model reads texts")
    if kind != "text" and (cfg.train.accumulate > 1 or cfg.train.grad_checkpointing or cfg.train.group_by_length):
        raise UserError("--accumulate, --grad-checkpointing and --group-by-length are for masked-LM training of text models; AdaBN on images "
                        "computes no gradients and has no texts to group")
    if kind != "text":  # read by masked-LM training only (--lr also by an --intermediate fit): said, not ignored in silence
        unread = [f for f, on in (("--lr", cfg.optim.lr is not None and not intermediate), ("--epochs", epochs != 1),
                                  ("--text-column", cfg.data.text_column is not None)) if on]
        if unread:
            con.print(f"[yellow]note[/]: {', '.join(unread)} {'is' if len(unread) == 1 else 'are'} for masked-LM training of text models; "
                      "AdaBN on images does not read them")
    from .rundir import refuse_out_in_data

    refuse_out_in_data(out, cfg.data.path, cfg.model.name)
    rundir = RunDir(out, overwrite=overwrite)
    from .fit import make_accelerator

    accelerator = make_accelerator(cfg)  # fit's device and precision (--cpu, --precision)
    t0 = time.perf_counter()
    info: dict = {"method": None, "source_model": cfg.model.name, "data": cfg.data.path}
    from .backbones import create_backbone

    if kind == "text":
        if intermediate:
            raise UserError("--intermediate (a supervised intermediate task) is for images; for text, fit on it and pass --model run:DIR")
        backbone = create_backbone(cfg.model.name, arch=cfg.model.arch)
        from .inputs import refuse_image_data
        from .text_data import read_texts

        refuse_image_data(cfg.data.path, cfg.model.name)
        texts = read_texts(cfg.data.path, text_column=cfg.data.text_column, encoding=cfg.data.encoding)
        heldout: list[str] = []
        if len(texts) >= HELDOUT_FROM:  # 5% (at most 500), seeded, to tell whether adaptation taught the encoder anything
            pick = set(np.random.default_rng(cfg.train.seed).permutation(len(texts))[: min(500, len(texts) // 20)].tolist())
            heldout = [t for i, t in enumerate(texts) if i in pick]
            texts = [t for i, t in enumerate(texts) if i not in pick]
        con.print(f"adapt: masked-language-model pretraining of {cfg.model.name} on {len(texts)} texts from {cfg.data.path}, {epochs} epoch{'s' if epochs != 1 else ''}"
                  + (f", {len(heldout)} more held out to score it" if heldout else ""))
        info.update(method="mlm", **mlm(backbone, texts, heldout=heldout, epochs=epochs, lr=cfg.optim.lr or 5e-5, batch_size=cfg.train.batch_size,
                                        max_length=inputs_for(cfg, backbone).max_length, seed=cfg.train.seed, head_steps=head_steps, console=con,
                                        accelerator=accelerator, accumulate=cfg.train.accumulate, grad_checkpointing=cfg.train.grad_checkpointing,
                                        group_by_length=cfg.train.group_by_length, should_stop=should_stop))
        if "head_first_loss" in info:
            con.print(f"new masked-LM head trained alone first: loss {info['head_first_loss']:.3f} -> {info['head_last_loss']:.3f} over {info['head_steps']} steps")
        if info["first_loss"] is not None:
            con.print(f"masked-LM loss {info['first_loss']:.3f} -> {info['last_loss']:.3f} over {info['steps']} steps")
        if "heldout" in info:
            h = info["heldout"]
            con.print(f"held-out masked-LM loss ({h['texts']} texts, the same masks): {h['loss_before']:.3f} before the encoder trained -> "
                      f"{h['loss_after']:.3f} after" + ("" if h["loss_after"] < h["loss_before"] else " (not lower: try more epochs or another --lr, or skip adapt)"))
    else:
        name = cfg.model.name
        if intermediate:
            from .fit import fit

            inter_dir = Path(out).with_name(Path(out).name + "-intermediate")
            inter_cfg = replace(cfg, data=intermediate)
            resume = _intermediate_to_resume(inter_dir, inter_cfg, overwrite)
            con.print(f"adapt: supervised intermediate task on {intermediate} first ({inter_dir}{', resumed from its checkpoint' if resume else ''})")
            fit(inter_cfg, inter_dir, overwrite=not resume, resume=resume, console=con, should_stop=should_stop, should_abort=should_stop)
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

        files = _image_sources(cfg.data.path, cfg.model.name)
        inputs = inputs_for(cfg, backbone)
        x, kept, bad = inputs.encode(ImageSet(files, np.zeros(len(files), int), ["unlabelled"]), progress=stopped)
        if has_bn and adabn_batch_size < 2:  # BatchNorm's batch statistics need two images; it was raised in silence
            con.print(f"[yellow]note[/]: AdaBN needs at least 2 images per batch: --batch-size {adabn_batch_size} is raised to 2")
        n = adabn(backbone, x, inputs.eval_transform(), batch_size=max(2, adabn_batch_size), device=accelerator.device, should_stop=stopped) if has_bn else 0
        con.print(f"adapt: AdaBN re-estimated {n} BatchNorm layers on {len(kept)} target images from {cfg.data.path}"
                  + (f" (left out {len(bad)} unreadable: {'; '.join(bad[:3])})" if bad else ""))
        info.update(method="adabn" + ("+intermediate" if intermediate else ""), batchnorm_layers=n, images=len(kept), skipped=bad[:10])
        if not has_bn:
            info["method"] = "intermediate"
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    # The run directory of an adapted backbone. AdaBN of an earlier run keeps that run's head and
    # classes (the same task on shifted images: `fit --model run:DIR` keeps the head when the classes
    # match, and the run predicts as it is); otherwise no classes (a zero-output head), so `fit --model
    # run:DIR` builds a new one.
    head, head_meta, classes = create_head("linear", backbone.num_features, 0), {"kind": "linear", "hidden": cfg.model.head_hidden, "dropout": 0.0}, []
    if kind != "text" and not intermediate and cfg.model.name.startswith("run:"):
        from .fit import load_model

        source, source_meta = load_model(cfg.model.name[len("run:"):])
        if source_meta.get("classes"):
            head, head_meta, classes = source.head, source_meta["head"], list(source_meta["classes"])
            info["head"] = f"kept from {cfg.model.name} ({len(classes)} classes)"
            # that head was fitted to features of the old statistics: it can fall behind them (hymenoptera,
            # AdaBN of a 96.7% linear-probe run on its own val images: 77.1%; a linear probe of the adapted run: 94.1%)
            con.print(f"[yellow]note[/]: the head kept from {cfg.model.name} was fitted to features of the old BatchNorm statistics, so it may "
                      f"predict worse on them: evaluate it, or refit the head: transferkit fit --data LABELLED --model run:{rundir.path} --strategy linear_probe")
    model = TransferModel(backbone, head)
    inputs = inputs_for(cfg, backbone)
    meta = {
        "format": "transferkit-model/1", "modality": kind, "backbone": backbone.spec, "weights_id": f"adapted:{backbone.weights_id}",
        "head": head_meta, "classes": classes, "adapted": info, **inputs.meta(),
    }
    rundir.create()
    rundir.write_yaml("config.yaml", cfg.to_dict())
    write_model(rundir, model, meta)
    rundir.write_json("adapt.json", info)
    if classes:  # the kept head's run: its training examples stay known to `evaluate` (it said the run was from an older transferkit)
        from .fit import load_fingerprints, write_fingerprints

        seen, chose = load_fingerprints(cfg.model.name[len("run:"):])
        if seen is not None:
            write_fingerprints(rundir, sorted(seen), sorted(chose))
    rundir.finalize()
    con.print(f"wrote {rundir.path}: fine-tune it with `transferkit fit --data TARGET --model run:{rundir.path}`")
    return json.loads(json.dumps(info))
