"""Plots a person would rather look at than read: training curves and the confusion matrix."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Class names in Chinese, Japanese or Korean drew as empty boxes (DejaVu Sans has no such glyphs):
# matplotlib falls back along font.family to an installed font that has them (none here is installed).
_FALLBACKS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR", "Source Han Sans", "WenQuanYi Zen Hei", "Droid Sans Fallback",
              "Microsoft YaHei", "Yu Gothic", "Malgun Gothic", "PingFang SC", "Hiragino Sans", "Apple SD Gothic Neo", "Arial Unicode MS")


def _font_fallbacks() -> None:
    from matplotlib import font_manager

    have = {f.name for f in font_manager.fontManager.ttflist}
    extra = [n for n in _FALLBACKS if n in have]
    if extra:
        plt.rcParams["font.family"] = ["DejaVu Sans", *extra]


_font_fallbacks()


def curves_figure(history: list[dict], best_epoch: int | None = None, final_accuracy: float | None = None):
    """Loss, validation accuracy and learning rate per epoch, phases marked; `best_epoch` (the epoch
    whose weights the run kept, by its selection metric) marked, else the most accurate one.
    `final_accuracy`: the final fp32 evaluation of the kept weights, said beside the epoch's own
    when they differ (training validated under bf16 autocast: 93.8% there, 87.5% in the table)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ep = [h["epoch"] for h in history]
    ax = axes[0]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax.plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    ax.set(title="loss", xlabel="epoch")
    ax.legend()
    ax = axes[1]
    ax.plot(ep, [100 * h["val_accuracy"] for h in history], "o-", color="C2")
    best = ep.index(best_epoch) if best_epoch in ep else int(np.argmax([h["val_accuracy"] for h in history])) if history else 0
    if history:
        then = f"{100 * history[best]['val_accuracy']:.1f}%"
        final = None if final_accuracy is None else f"{100 * final_accuracy:.1f}%"
        ax.axvline(ep[best], color="gray", ls=":", label=f"kept: epoch {ep[best]}, {then}" + (f"\n(final fp32 evaluation: {final})" if final not in (None, then) else ""))
        ax.legend(loc="best", fontsize=8)  # where it covers the least of the curve (lower right hid a probe of 100 epochs)
    ax.set(title="validation accuracy (%)", xlabel="epoch")
    ax = axes[2]
    ax.plot(ep, [h["lr"] for h in history], "o-", color="C3")
    ax.set(title="learning rate (end of epoch)", xlabel="epoch")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    phases = [h.get("phase") for h in history]
    for i in range(1, len(phases)):
        if phases[i] != phases[i - 1]:
            for a in axes:
                a.axvspan(ep[0] - 0.5, ep[i] - 0.5, color="0.93", zorder=0)
            axes[0].text(ep[0], axes[0].get_ylim()[1], f" {phases[0]}", va="top", fontsize=8, color="0.4")
    for a in axes:
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # epochs are whole
    _tight(fig)
    return fig


def confusion_figure(cm, classes: list[str]):
    cm = np.asarray(cm)
    n = len(classes)
    size = min(12, max(5.0, 2.5 + 0.55 * n))  # a 2-class matrix at 3.6 inches cut its title and long names
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}", ha="center", va="center", fontsize=9 if n <= 12 else 6, color="white" if frac[i, j] > 0.5 else "black")
    # long names overprinted each other; cut in the middle, so that names alike at the start stay apart
    names = _short_names(classes)
    tilt = n > 4 or max(map(len, names), default=0) > 8
    ax.set_xticks(range(n), names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix\n(counts; colour = row fraction)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    _tight(fig)
    return fig


def _short_names(classes, width: int = 24) -> list[str]:
    """Class names cut in the middle to `width` characters, so that names alike at the start stay apart;
    names alike at both ends would still print the same, so those get their class index as well."""
    cut = [c if len(c) <= width else c[: width // 2 - 1] + "..." + c[-(width - width // 2 - 2):] for c in map(str, classes)]
    seen = {n: cut.count(n) for n in cut}
    return [f"{n} [{i}]" if seen[n] > 1 else n for i, n in enumerate(cut)]


def _tight(fig) -> None:
    """tight_layout without its "Tight layout not applied" warning on the console (a figure it cannot
    fit keeps its layout; the warning said nothing a user could act on)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()


def lr_figure(trace: list[tuple]):
    """The learning rate actually applied at every optimizer step, per phase (head group, and the
    lowest group that trains where discriminative rates make it differ)."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    phases = list(dict.fromkeys(t[3] for t in trace))
    for i, ph in enumerate(phases):
        pts = [t for t in trace if t[3] == ph]
        # each rate holds for its step (a step decay is a step, not a slope), the last one too (it showed
        # only as the drop into it); a lone step shows as a dot
        steps = [t[0] for t in pts] + ([pts[-1][0] + 1] if len(pts) > 1 else [])
        def held(k):
            return [t[k] for t in pts] + ([pts[-1][k]] if len(pts) > 1 else [])

        how = dict(drawstyle="steps-post", marker="o" if len(pts) == 1 else None)
        ax.plot(steps, held(1), color=f"C{i}", label=f"{ph}: head", **how)
        if any(abs(t[2] - t[1]) > 1e-12 * max(t[1], 1e-30) for t in pts):
            ax.plot(steps, held(2), color=f"C{i}", ls="--", label=f"{ph}: lowest trained group", **how)
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="learning-rate schedule as applied")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    if trace:
        ax.legend(fontsize=8)
    _tight(fig)
    return fig


def reliability_figure(cal: dict):
    """Reliability diagram: accuracy against confidence per bin (bars), the diagonal, bin counts."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for b in cal["bins"]:
        w = b["high"] - b["low"]
        ax.bar(b["low"], b["accuracy"], width=w, align="edge", color="C0", alpha=0.75, edgecolor="white")
        # the gap, over- or under-confident alike: hatched between accuracy and the bin's mean confidence
        # (a filled red bar below the accuracy, for an under-confident bin, vanished into the blue one)
        lo, hi = sorted((b["accuracy"], b["confidence"]))
        ax.bar(b["low"], hi - lo, bottom=lo, width=w, align="edge", fill=False, hatch="///", edgecolor="C3", lw=0)
        ax.plot([b["low"], b["high"]], [b["confidence"]] * 2, color="C3", lw=1.5)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {100 * cal['ece']:.1f}%)\nbars: accuracy; red line: mean confidence", fontsize=10)
    _tight(fig)
    return fig


def close(fig) -> None:
    plt.close(fig)


def mistakes_figure(thumbs: np.ndarray, cams, rows: list[dict], note: str = ""):
    """The most confidently wrong validation images as the model saw them, each titled true -> said
    (probability), with the Grad-CAM map toward the class it said laid over it."""
    n = len(thumbs)
    names = sorted({str(r[k]) for r in rows for k in ("true", "predicted")})
    short = dict(zip(names, _short_names(names, 15)))  # "TRUE -> SAID (p)" in a 2.6-inch panel: 110-character names ran into each other
    cols = min(4, n)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.9 * nrows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        r = rows[k]
        ax.imshow(thumbs[k])
        if cams is not None:
            ax.imshow(cams[k], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        name = str(r["source"]).replace("\\", "/").rsplit("/", 1)[-1]
        name = name if len(name) <= 24 else name[:21] + "..."
        ax.set_title(f"{short[str(r['true'])]} -> {short[str(r['predicted'])]} ({r['p_predicted']:.2f})\n{name}", fontsize=8)
    how = "Grad-CAM: where the model looked for the class it said" if cams is not None else (note or "")
    fig.suptitle(f"most confident mistakes (true -> said, probability){'; ' + how if how else ''}", fontsize=9)
    _tight(fig)
    return fig


def explain_image(crop: np.ndarray, cam, caption: str):
    """One image as the model saw it beside the same under its Grad-CAM map (jet, 45%), with a caption
    strip: a PIL image, composed directly (a matplotlib figure per image took 0.3 s each)."""
    from PIL import Image, ImageDraw

    panels = [crop]
    if cam is not None:
        heat = (plt.get_cmap("jet")(np.clip(cam, 0, 1))[..., :3] * 255).astype(np.float32)
        panels.append((0.55 * crop.astype(np.float32) + 0.45 * heat).round().astype(np.uint8))
    gap = np.full((crop.shape[0], 6, 3), 255, np.uint8)
    body = np.concatenate([p for q in panels for p in (q, gap)][:-1], axis=1)
    out = Image.new("RGB", (body.shape[1], body.shape[0] + 20), "white")
    out.paste(Image.fromarray(body), (0, 20))
    ImageDraw.Draw(out).text((4, 4), caption, fill="black")
    return out
