"""Classification metrics from labels and predicted probabilities (scikit-learn underneath)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 averaged over the classes that occur, as a label or as a prediction. A class that does
    neither has no F1 (0/0); counting it as 0 would score a perfect prediction on one class's images
    0.5 with two classes (`evaluate` on a class folder, a group of --group-column)."""
    occur = np.union1d(np.asarray(y_true), np.asarray(y_pred))
    return float(f1_score(y_true, y_pred, labels=occur, average="macro", zero_division=0)) if occur.size else 0.0


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """accuracy, macro_f1, auroc (one-vs-rest macro for more than two classes; None when a class is
    absent from y_true), confusion matrix and per-class precision / recall / f1 / support."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.arange(len(classes))
    y_pred = proba.argmax(1)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    said = np.bincount(y_pred, minlength=len(classes))
    present = np.unique(y_true)
    auroc = None
    if len(present) == len(classes) >= 2:
        if len(classes) == 2:
            auroc = float(roc_auc_score(y_true, proba[:, 1]))
        else:
            auroc = float(roc_auc_score(y_true, proba / proba.sum(1, keepdims=True), multi_class="ovr", average="macro", labels=labels))
    return {
        "calibration": calibration(y_true, proba),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": macro_f1(y_true, y_pred),
        "auroc": auroc,
        "n": int(len(y_true)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        # 0/0 is None (n/a), not 0: recall of a class the data does not hold, precision of one never
        # predicted (evaluate on one class's images printed the other's "precision 0.000, recall 0.000")
        "per_class": {
            c: {"precision": float(p[i]) if said[i] else None, "recall": float(r[i]) if s[i] else None,
                "f1": float(f[i]) if s[i] or said[i] else None, "support": int(s[i])} for i, c in enumerate(classes)
        },
    }


def fmt(v, spec: str = ".3f") -> str:
    """A per-class score as printed: n/a where it is 0/0 (None)."""
    return "n/a" if v is None else format(v, spec)


def calibration(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> dict:
    """Expected calibration error (Guo et al. 2017): confidence (the top probability) binned into
    `n_bins` equal-width bins; ECE = sum over bins of |accuracy - mean confidence| x the bin's share
    of the examples. Also returns the bins for a reliability diagram."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    conf = proba.max(1)
    correct = (proba.argmax(1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)  # bin i holds (edges[i], edges[i+1]]
    bins, ece = [], 0.0
    for b in range(n_bins):
        m = idx == b
        if not m.any():
            continue
        acc, cf = float(correct[m].mean()), float(conf[m].mean())
        ece += m.mean() * abs(acc - cf)
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(m.sum()), "accuracy": acc, "confidence": cf})
    return {"ece": float(ece), "n_bins": n_bins, "bins": bins}


def group_metrics(y_true: np.ndarray, proba: np.ndarray, groups: np.ndarray, classes: list[str]) -> dict:
    """Accuracy and macro-F1 per group, and the worst group by accuracy (the bias a source task can carry)."""
    y_true, proba, groups = np.asarray(y_true), np.asarray(proba), np.asarray(groups)
    per = {}
    for g in sorted(set(groups.tolist())):
        m = groups == g
        pred = proba[m].argmax(1)
        per[str(g)] = {
            "n": int(m.sum()), "accuracy": float(accuracy_score(y_true[m], pred)),
            "macro_f1": macro_f1(y_true[m], pred),
        }
    worst = min(per, key=lambda g: per[g]["accuracy"])
    best = max(per, key=lambda g: per[g]["accuracy"])
    gap = per[best]["accuracy"] - per[worst]["accuracy"]
    return {"per_group": per, "worst_group": worst if gap > 0 else None, "gap": gap}  # None: every group scores alike


def worst_group_text(gm: dict) -> str:
    """"worst group: G (N points below the best)", or that the groups tie (no group is worst)."""
    if gm.get("worst_group") is None:
        return f"every group scores alike ({100 * next(iter(gm['per_group'].values()))['accuracy']:.1f}%)" if gm["per_group"] else "no groups"
    return f"worst group: {gm['worst_group']} ({100 * gm['gap']:.1f} points below the best)"


def paired_bootstrap(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                     metric: str = "accuracy") -> dict:
    """`metric` (accuracy, or macro_f1: the run's --metric on imbalanced data) of a minus b, with a
    paired bootstrap 95% interval over the evaluation examples."""
    y_true, pa, pb = np.asarray(y_true), np.asarray(pred_a), np.asarray(pred_b)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n_boot, len(y_true)))
    if metric == "macro_f1":
        k = int(max(y_true.max(initial=0), pa.max(initial=0), pb.max(initial=0))) + 1
        # each bootstrap sample as how many times it draws every example: the classes' counts are then
        # one matrix product, not 2 x n_boot calls of f1_score
        w = np.zeros((n_boot, len(y_true)))
        np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)
        onehot = np.eye(k)
        # each model's classes as macro_f1 takes them on the whole sample (present, or predicted by it),
        # the same in every resample (0 where a resample has a class neither present nor said). Taken
        # afresh in each resample, a resample without the rare class scored the majority guess 1.0 and a
        # model with one false alarm 0.47: with 2 rare examples of 10 the interval spread over [-56, +63]
        # points. Fixed, the point estimate is the tables' difference.
        truth = onehot[y_true]

        def f1s(pred) -> np.ndarray:
            said = onehot[pred]
            occur = (truth.sum(0) + said.sum(0)) > 0  # macro_f1's classes for this model, on the whole sample
            tp, support, predicted = w @ (truth * said), w @ truth, w @ said
            f1 = np.where(support + predicted > 0, 2 * tp / np.maximum(support + predicted, 1e-12), 0.0)
            return (f1 * occur).sum(1) / max(int(occur.sum()), 1)

        boots, diff = f1s(pa) - f1s(pb), macro_f1(y_true, pa) - macro_f1(y_true, pb)
    else:
        d = (pa == y_true).astype(float) - (pb == y_true).astype(float)
        boots, diff = d[idx].mean(1), float(d.mean())
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"diff": float(diff), "ci_low": float(lo), "ci_high": float(hi), "metric": metric}


def verdict(boot: dict, baseline: str, *, transferred: bool = True, split: str = "validation") -> str:
    """One line: did the model beat `baseline` on `split`, by the paired bootstrap's 95% interval.
    A model from random weights (`transferred` False) transferred nothing: it is better or worse, not
    "transfer helped" or "negative transfer"."""
    d, lo, hi = 100 * boot["diff"], 100 * boot["ci_low"], 100 * boot["ci_high"]
    ci = f"95% CI [{lo:+.1f}, {hi:+.1f}]"
    other = baseline  # "the baseline" named the model without the source stage too, a word used for the classical one
    if boot.get("metric") == "macro_f1":  # points of macro-F1 (x100), the run's --metric, not of accuracy
        baseline = f"{baseline} in macro-F1"
    scratch = "" if transferred else "; no pretrained weights: trained from scratch, nothing was transferred"
    if lo > 0:
        return (f"transfer helped: {d:+.1f} points over {baseline}" if transferred else f"better than {baseline}: {d:+.1f} points") + f" on the {split} split ({ci}{scratch})"
    if hi < 0:
        return (f"NEGATIVE TRANSFER: {d:+.1f} points against {baseline}" if transferred else f"worse than {baseline}: {d:+.1f} points") + f" on the {split} split ({ci}{scratch}); {other} is better on this data"
    edge = "; its lower end is 0, not above it" if lo == 0 and hi > 0 else "; its upper end is 0, not below it" if hi == 0 and lo < 0 else ""
    return f"no significant difference from {baseline}: {d:+.1f} points on the {split} split ({ci}{edge}{scratch})"


def verdict_kind(v: str | None) -> str:
    """'helped', 'negative' or 'neutral': how a `verdict` line came out."""
    v = v or ""
    return "negative" if v.startswith(("NEGATIVE", "worse than")) else "helped" if v.startswith(("transfer helped", "better than")) else "neutral"


def in_short(base_verdict: str, scratch_verdict: str | None, source_verdict: str | None = None) -> str:
    """The verdicts of a run with `--baseline scratch` and/or `base` (against the classical baseline,
    the same network from scratch, and the model the source stage started from) as one plain sentence:
    they can read as contradictory a line apart. The source stage's was left out: "use it" was said
    of a target run that fine-tuning its starting model directly beat by 13 points."""
    kb = verdict_kind(base_verdict)
    if scratch_verdict is not None:
        ks = verdict_kind(scratch_verdict)
        pretrained = {"helped": "the pretrained weights beat training from scratch", "neutral": "the pretrained weights did not do clearly better than training from scratch",
                      "negative": "training from scratch beat the pretrained weights (negative transfer)"}[ks]
        classical = {"helped": "and the model beats the classical baseline: use it", "neutral": "and the classical baseline does as well: prefer the simpler model",
                     "negative": "but the classical baseline is better still on this data: prefer it"}[kb]
        if kb == "helped" and ks != "helped":
            classical = "yet the model beats the classical baseline"
        said = f"{pretrained}, {classical}"
    else:
        said = {"helped": "the model beats the classical baseline", "neutral": "the classical baseline does as well: prefer the simpler model",
                "negative": "the classical baseline is better on this data: prefer it"}[kb]
    if source_verdict is None:
        return said
    source = {"helped": "the source stage helped: fine-tuning its starting model directly did worse",
              "neutral": "the source stage made no clear difference: fine-tuning its starting model directly did as well",
              "negative": "the source stage hurt: fine-tuning its starting model directly did better, so leave the source stage out"}[verdict_kind(source_verdict)]
    if said.endswith(": use it") and verdict_kind(source_verdict) != "helped":
        said = said[: -len(": use it")]  # not this run's model: the one without the source stage, or as good
    return f"{said}; {source}"


TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(log_proba: np.ndarray, y_true: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 that minimises the negative log-likelihood of
    softmax(log_proba / T) on labelled examples. `log_proba` may be logits or log-probabilities (a
    constant per row does not change the softmax). One parameter, a smooth convex-in-1/T objective:
    a bounded scalar search on log T (scipy) finds it; argmax, hence accuracy, never changes."""
    import torch
    from scipy.optimize import minimize_scalar

    z = torch.as_tensor(np.asarray(log_proba, dtype=np.float64))
    y = torch.as_tensor(np.asarray(y_true), dtype=torch.long)

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / np.exp(log_t), y))

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))
