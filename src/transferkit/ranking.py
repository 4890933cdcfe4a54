"""Rank: which pretrained model to fine-tune, decided from transferability scores on cached features.

Fine-tuning every candidate to find the best one costs an hour; a transferability score costs one
forward pass per training image (cached per image, so a second ranking, a later `fit` or a search
never runs that backbone again) plus a few milliseconds to seconds of linear algebra. Every score
reads the TRAINING split only (the split `fit` would use with the same seed), so ranking never looks
at the validation images that later judge the fine-tuned model.

Scores, all "higher is better" (`SCORES`; `transferkit rank --score NAME` sorts by one of them):

- `logme`: LogME (You et al. 2021), the maximised log evidence of a Bayesian linear regression from
  the features to each class's one-vs-rest target, per sample, averaged over classes;
- `leep`: LEEP (Nguyen et al. 2020), the log-likelihood of the target labels under the source
  classifier's probabilities pushed through the empirical P(target | source) (source head needed);
- `nce`: NCE (Tran et al. 2019), minus the conditional entropy H(target | source argmax label)
  (source head needed);
- `hscore`: H-score (Bao et al. 2019), tr(cov(f)^-1 cov(E[f | y])), with the Ledoit-Wolf shrinkage
  of Ibrahim et al. 2022 so that D >= N features do not make it explode;
- `knn`: cross-validated 5-NN accuracy on L2-normalised features;
- `logreg`: cross-validated logistic-regression accuracy on standardised features.

Each score is a function of the SET of samples: shuffling the rows does not change it (the
cross-validated ones put the samples in a content-defined order before drawing folds).
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ._registry import Registry
from .errors import UserError, did_you_mean

__all__ = [
    "SCORES", "Score", "ScoreInputs", "LogME", "logme", "leep", "nce", "hscore", "knn_accuracy", "logreg_accuracy",
    "ModelScores", "Ranking", "rank_models", "pick_model", "resolve_auto_model", "auto_model", "default_candidates",
]


# ------------------------------------------------------------------------------------ score registry


@dataclass(frozen=True)
class ScoreInputs:
    """What any score may read: the training features, their labels, the source classifier's logits."""

    features: np.ndarray  # (N, D) backbone features of the training images
    labels: np.ndarray  # (N,) target labels
    source_logits: np.ndarray | None = None  # (N, Z) logits of the source task's classifier, when there is one
    seed: int = 0  # cross-validation folds
    # each example's identity, the same for every candidate (its content's fingerprint): the folds are
    # drawn from it, so that every candidate is scored on the same folds (they were drawn from each
    # candidate's own feature values: scaling them moved a logistic regression's score by 2 points)
    keys: list | None = None


@dataclass(frozen=True)
class Score:
    """A registered transferability score; `compute` returns a float, higher meaning a better transfer."""

    name: str
    compute: Callable[[ScoreInputs], float]
    needs_source_head: bool
    label: str  # for tables and messages
    reference: str


SCORES: Registry[Score] = Registry("score")


def _register(name: str, label: str, reference: str, *, needs_source_head: bool = False):
    def deco(fn: Callable[[ScoreInputs], float]) -> Callable[[ScoreInputs], float]:
        help_ = f"{(fn.__doc__ or '').strip().splitlines()[0]} [{reference}]"
        SCORES.register(name, help_)(Score(name, fn, needs_source_head, label, reference))
        return fn

    return deco


def scores_for(has_source_head: bool) -> list[str]:
    """The registered scores a model can be given: all of them only when it has a source classifier."""
    return [n for n in SCORES.names() if has_source_head or not SCORES.get(n).needs_source_head]


# ---------------------------------------------------------------------------------- input checking


def _check_xy(features: np.ndarray, labels: np.ndarray, what: str = "features") -> tuple[np.ndarray, np.ndarray, int]:
    """float64 (N, D) features and labels re-coded 0..C-1; C >= 2 and finite values, or a UserError.
    float64 throughout: LogME's evidence sums N log terms and H-score inverts a D x D covariance,
    and float32 loses the last digits that separate close candidates."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2:
        raise UserError(f"{what} must be a 2-D array (samples x dimensions), got shape {f.shape}")
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    if len(y) != len(f):
        raise UserError(f"{len(f)} rows of {what} but {len(y)} labels")
    if len(classes) < 2:
        raise UserError(f"transferability scores need at least two classes, got {len(classes)}")
    if not np.isfinite(f).all():
        raise UserError(f"{what} contain NaN or infinite values")
    return f, y.reshape(-1), len(classes)


def _one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(y), n_classes))
    out[np.arange(len(y)), y] = 1.0
    return out


def _left_singular(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, sigma): the left singular vectors of F (N x k) and the squared singular values (k,), for its
    numerical rank k. From the eigendecomposition of the smaller Gram matrix, F F^T or F^T F: a
    symmetric eigensolver on a min(N, D)-square matrix is several times faster than an SVD of F (1.5 s
    against 5 to 20 s for 1437 x 1280 features on two cores), and a score needs nothing else."""
    import scipy.linalg

    n, d = f.shape
    gram = f @ f.T if n <= d else f.T @ f
    sigma, vec = scipy.linalg.eigh(gram, driver="evd", check_finite=False)
    # Eigenvalues below rounding level of the largest are noise, not directions of the features.
    keep = sigma > max(sigma[-1], 0.0) * max(n, d) * np.finfo(np.float64).eps
    sigma, vec = sigma[keep], vec[:, keep]
    u = vec if n <= d else (f @ vec) / np.sqrt(sigma)
    return u, sigma


# ------------------------------------------------------------------------------------------- LogME


class LogME:
    """LogME (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning").

    For each class c, the one-vs-rest target y_c in {0, 1}^N is modelled as y_c = F w + noise, with
    the prior w ~ N(0, alpha^-1 I) and noise ~ N(0, beta^-1 I). The evidence p(y_c | F, alpha, beta)
    is maximised over alpha and beta by MacKay's fixed-point iteration; the score is the maximised
    log evidence divided by N, averaged over classes. A model whose features make every class a
    simple linear function (high beta) with small weights (high alpha) gets a high score.

    One singular value decomposition of F serves every class and every iteration: in its coordinates
    A = alpha I + beta F^T F is diagonal, so each iteration costs O(rank x classes) and all classes
    iterate together. The evidence is written as
        N/2 log beta - N/2 log 2 pi - 1/2 sum_i log1p(sigma_i beta / alpha) - beta/2 |y - F m|^2 - alpha/2 |m|^2
    which is Bishop's (3.86) with D/2 log alpha - 1/2 log|A| folded into the log1p terms: exact for
    D > N too (the D - rank zero singular values cancel against log alpha, rather than being left out
    of log|A| while D/2 log alpha stays) and free of log(0) when features are degenerate.

    Learned attributes: `evidence_` (per class, per sample), `alpha_`, `beta_`, `n_iter_`,
    `converged_`, `score_` (the mean of `evidence_`).
    """

    def __init__(self, *, tol: float = 1e-7, max_iter: int = 1000):
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, features: np.ndarray, labels: np.ndarray) -> LogME:
        f, y, n_classes = _check_xy(features, labels)
        n = len(f)
        targets = _one_hot(y, n_classes)
        u, sigma = _left_singular(f)
        sigma = sigma[:, None]  # (k, 1): the nonzero eigenvalues of F^T F
        x2 = (u.T @ targets) ** 2  # (k, C): squared targets in the singular basis
        # The part of each target outside the span of F: a residual no weights can remove.
        outside = np.maximum((targets**2).sum(0) - x2.sum(0), 0.0)
        # Floors keep the updates finite for degenerate targets (one already exactly fit, or
        # orthogonal to every feature); relative to the targets' and features' own scales, so that
        # scaling the features by any constant leaves the score unchanged.
        y2 = (targets**2).sum(0)
        sigma_max, sigma_min = (float(sigma.max()), float(sigma.min())) if len(sigma) else (0.0, 0.0)
        m2_floor = 1e-30 * y2 / (sigma_max or 1.0)
        res2_floor = 1e-30 * y2

        def stats(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """gamma (effective number of parameters), |m|^2 and |y - F m|^2 at t = alpha / beta."""
            gamma = (sigma / (sigma + t)).sum(0)
            m2 = (sigma * x2 / (sigma + t) ** 2).sum(0)
            res2 = (x2 * (t / (sigma + t)) ** 2).sum(0) + outside
            return gamma, m2, res2

        alpha, beta = np.ones(n_classes), np.ones(n_classes)
        converged = np.zeros(n_classes, dtype=bool)
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            t = alpha / beta
            gamma, m2, res2 = stats(t)
            # MacKay's updates; gamma = 0 only when F has rank 0, where alpha does not matter.
            alpha = np.where(gamma > 0, gamma / np.maximum(m2, m2_floor), alpha)
            beta = np.maximum(n - gamma, 1e-12) / np.maximum(res2, res2_floor)
            t_new = alpha / beta
            # Besides a fixed point, the optimum can lie on a boundary that the iteration only
            # approaches slowly: alpha -> infinity (features that do not explain the target: w = 0 is
            # best) or beta -> infinity (D >= N features that fit the target exactly). The evidence
            # stops moving long before t does: stop once t is 1e12 beyond the spectrum on either side.
            boundary = (t_new * 1e-12 > sigma_max) | (t_new < 1e-12 * sigma_min)
            converged = (np.abs(t_new - t) <= self.tol * t) | boundary
            if converged.all():
                break
        gamma, m2, res2 = stats(alpha / beta)  # the evidence AT the returned alpha, beta
        log_det_ratio = np.log1p(sigma * (beta / alpha)).sum(0)
        evidence = (
            n / 2 * np.log(beta) - n / 2 * math.log(2 * math.pi) - 0.5 * log_det_ratio - beta / 2 * res2 - alpha / 2 * m2
        ) / n
        self.alpha_, self.beta_, self.evidence_ = alpha, beta, evidence
        self.n_iter_, self.converged_ = n_iter, converged
        self.score_ = float(evidence.mean())
        return self


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME score of `features` for `labels` (see `LogME`)."""
    return LogME().fit(features, labels).score_


# ------------------------------------------------------------------------------------ LEEP and NCE


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def leep(source_proba: np.ndarray, labels: np.ndarray) -> float:
    """LEEP (Nguyen et al. 2020): mean log P(y_i | x_i) of the "expected empirical predictor"
    sum_z P^(y | z) theta(x_i)_z, where theta are the source classifier's probabilities and
    P^(y | z) = P^(y, z) / P^(z) with P^(y, z) = 1/N sum_{i: y_i = y} theta(x_i)_z. Vectorised: the joint
    is one (C x N) @ (N x Z) product."""
    p, y, n_classes = _check_xy(source_proba, labels, what="source probabilities")
    joint = _one_hot(y, n_classes).T @ p / len(p)  # (C, Z)
    marginal = joint.sum(0)
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P^(y | z)
    eep = (p * cond[y]).sum(1)  # each term > 0: some z carries >= 1/Z of x_i's probability and has joint > 0
    return float(np.mean(np.log(np.maximum(eep, np.finfo(np.float64).tiny))))


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE (Tran et al. 2019): -H(Y | Z), the negative conditional entropy of the target labels given
    the source classifier's hard labels, from their empirical joint distribution (0 log 0 = 0)."""
    z = np.asarray(source_labels).reshape(-1)
    _, y, _ = _check_xy(np.zeros((len(np.asarray(labels)), 1)), labels, what="labels")
    if len(z) != len(y):
        raise UserError(f"{len(z)} source labels but {len(y)} target labels")
    _, z = np.unique(z, return_inverse=True)
    z = z.reshape(-1)
    n_z = int(z.max()) + 1
    joint = np.bincount(y * n_z + z, minlength=(int(y.max()) + 1) * n_z).reshape(-1, n_z) / len(y)  # P^(y, z)
    marginal = joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / np.where(marginal > 0, marginal, 1.0))[nz])))


# ----------------------------------------------------------------------------------------- H-score


def hscore(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score (Bao et al. 2019): tr(cov(f)^-1 cov(E[f | y])), how much of the features' variance lies
    between classes, in the features' own metric.

    With D close to or above N the sample covariance is singular or nearly so, and its inverse
    amplifies noise directions into a meaningless score. So cov(f) is replaced by its Ledoit-Wolf
    shrinkage (1 - r) cov(f) + r (tr cov(f) / D) I, and the between-class covariance scaled by the same
    1 - r, as Ibrahim et al. 2022 ("Newer is not always better") propose; with r = 0 this is Bao's
    H-score, and the directions in which the features do not vary at all are left out (a pseudo-inverse)."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    f, y, n_classes = _check_xy(features, labels)
    f = f - f.mean(0)
    n, d = f.shape
    u, sigma = _left_singular(f)
    mu = sigma.sum() / n / d  # tr(cov(f)) / D
    if mu <= 0:  # constant features: nothing varies, between classes or otherwise
        return 0.0
    r = float(ledoit_wolf_shrinkage(f, assume_centered=True))
    # cov(f) = V diag(sigma / N) V^T on the row space of F, and the shrunk covariance has the
    # eigenvalues lam there (r mu on the rest, which the class means, averages of rows, do not reach).
    lam = (1 - r) * sigma / n + r * mu
    # cov(E[f | y]) = sum_c (n_c / N) mu_c mu_c^T with the class means mu_c = F^T 1_c / n_c of the
    # centred features, whose coordinates on V are sqrt(sigma) U^T 1_c / n_c.
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    proj = (_one_hot(y, n_classes).T @ u) * np.sqrt(sigma) / counts[:, None]  # (C, k)
    return float((1 - r) * np.sum((counts / n)[:, None] * proj**2 / lam))


# --------------------------------------------------------------------- cross-validated accuracies


def _canonical_order(f: np.ndarray, y: np.ndarray, keys: list | None = None) -> np.ndarray:
    """A permutation that depends on each sample's identity only, so that folds drawn after it are the
    same whatever order the samples came in: its `keys` (the same for every candidate), else its
    feature values (identical rows with identical labels are interchangeable)."""
    ids = [str(k).encode() for k in keys] if keys is not None else [row.tobytes() for row in f]
    h = [hashlib.blake2b(k + int(lab).to_bytes(8, "little"), digest_size=16).digest() for k, lab in zip(ids, y)]
    return np.array(sorted(range(len(h)), key=h.__getitem__), dtype=int)


class TooFewForFolds(UserError):
    """A cross-validated score on data with fewer than 2 examples in some class."""


def _cv_predict(f: np.ndarray, y: np.ndarray, make: Callable[[int], object], folds: int, seed: int, keys: list | None = None) -> float:
    """Out-of-fold accuracy with stratified folds; `make(n_train)` builds a fresh scikit-learn classifier."""
    from sklearn.model_selection import StratifiedKFold

    order = _canonical_order(f, y, keys)
    f, y = f[order], y[order]
    n_splits = min(folds, int(np.bincount(y).min()))
    if n_splits < 2:
        raise TooFewForFolds("cross-validated scores need at least 2 images in every class")
    pred = np.empty_like(y)
    for train, test in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(f, y):
        clf = make(len(train))
        with warnings.catch_warnings():  # lbfgs may stop at max_iter on separable folds: the accuracy is still fine
            warnings.simplefilter("ignore")
            clf.fit(f[train], y[train])
        pred[test] = clf.predict(f[test])
    return float(np.mean(pred == y))


def knn_accuracy(features: np.ndarray, labels: np.ndarray, *, k: int = 5, folds: int = 5, seed: int = 0, keys: list | None = None) -> float:
    """Out-of-fold accuracy of a k-nearest-neighbour vote on L2-normalised features (cosine neighbours):
    a score that assumes nothing linear, only that similar images have similar features."""
    from sklearn.neighbors import KNeighborsClassifier

    f, y, _ = _check_xy(features, labels)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    f = np.divide(f, norm, out=np.zeros_like(f), where=norm > 0)
    return _cv_predict(f, y, lambda n_train: KNeighborsClassifier(n_neighbors=min(k, n_train)), folds, seed, keys)


def logreg_accuracy(features: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0, C: float = 1.0, keys: list | None = None) -> float:
    """Out-of-fold accuracy of a logistic regression on standardised features: what a linear probe
    would reach, estimated without touching the validation split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f, y, _ = _check_xy(features, labels)
    return _cv_predict(f, y, lambda n_train: make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=500)), folds, seed, keys)


# ------------------------------------------------------------------------------ registered scores


@_register("logme", "LogME", "You et al. 2021")
def _logme(s: ScoreInputs) -> float:
    """log evidence of a Bayesian linear model, per sample"""
    return logme(s.features, s.labels)


@_register("leep", "LEEP", "Nguyen et al. 2020", needs_source_head=True)
def _leep(s: ScoreInputs) -> float:
    """log-likelihood of the labels through the source classifier"""
    return leep(_softmax(s.source_logits), s.labels)


@_register("nce", "NCE", "Tran et al. 2019", needs_source_head=True)
def _nce(s: ScoreInputs) -> float:
    """minus the entropy of the labels given the source classifier's labels"""
    return nce(np.asarray(s.source_logits).argmax(1), s.labels)


@_register("hscore", "H-score", "Bao et al. 2019; shrinkage: Ibrahim et al. 2022")
def _hscore(s: ScoreInputs) -> float:
    """between-class over total feature covariance"""
    return hscore(s.features, s.labels)


@_register("knn", "kNN acc", "5-NN, 5-fold")
def _knn(s: ScoreInputs) -> float:
    """cross-validated 5-NN accuracy on L2-normalised features"""
    return knn_accuracy(s.features, s.labels, seed=s.seed, keys=s.keys)


@_register("logreg", "LogReg acc", "5-fold")
def _logreg(s: ScoreInputs) -> float:
    """cross-validated logistic-regression accuracy"""
    return logreg_accuracy(s.features, s.labels, seed=s.seed, keys=s.keys)


# ----------------------------------------------------------------------------------------- ranking


@dataclass
class ModelScores:
    """One candidate's row: its scores (None where a score does not apply) and what they cost."""

    name: str
    scores: dict[str, float | None]
    num_features: int
    has_source_head: bool
    features_s: float  # computing (or reading) the training features
    scores_s: dict[str, float]  # each score's own time
    cache_hit: bool  # True when the backbone did not run at all


@dataclass
class Ranking:
    """Candidates sorted best first by `score`, and what it took to rank them."""

    data: str
    score: str
    rows: list[ModelScores]
    n_train: int
    classes: list[str]
    decode_s: float
    wall_s: float
    notes: list[str] = field(default_factory=list)
    controls: list[str] = field(default_factory=list)  # random controls: a yardstick, never the recommendation
    tie_break: list[str] = field(default_factory=list)  # the scores that order candidates tied on `score`, in turn

    @property
    def best(self) -> str:
        return self._first().name

    def _first(self) -> ModelScores:
        return next((r for r in self.rows if r.name not in self.controls), self.rows[0])

    def reason(self) -> str:
        """Why `best` was picked, in one sentence (what `fit --model auto` prints)."""
        label = SCORES.get(self.score).label
        first = self._first()
        above = self.rows[: self.rows.index(first)]  # random controls that scored higher
        after = self.rows[self.rows.index(first) + 1 :]
        if first.name in self.controls:  # every candidate is one: what it trains transfers nothing
            return (f"every candidate is a random control (no pretrained weights): {first.name} has the highest {label} "
                    f"({first.scores[self.score]:.4f}), but a control transfers nothing; add pretrained candidates")
        rivals = [r for r in after if r.name not in self.controls]
        if rivals and shown(rivals[0].scores[self.score]) == shown(first.scores[self.score]):  # said as a tie, not as a win
            nxt = rivals[0]
            broke = next((s for s in self.tie_break if None not in (first.scores.get(s), nxt.scores.get(s)) and first.scores[s] != nxt.scores[s]), None)
            how = (f"{SCORES.get(broke).label} puts it ahead ({first.scores[broke]:.4f} against {nxt.scores[broke]:.4f})" if broke
                   else "they tie on every score, so the first given is picked")
            said = f"{first.name} ties with {nxt.name} on {label} ({first.scores[self.score]:.4f}) on the {self.n_train} training examples; {how}"
            return said + ("" if not above else "; the random control(s) " + ", ".join(f"{r.name} ({r.scores[self.score]:.4f})" for r in above)
                           + " scored higher (see the warning)")
        if not above:
            return (f"{first.name} has the highest {label} ({first.scores[self.score]:.4f}) of {len(self.rows)} candidates "
                    f"on the {self.n_train} training examples; next is {after[0].name} ({after[0].scores[self.score]:.4f})")
        models = [r for r in self.rows if r.name not in self.controls]
        picked = (
            f"{first.name} has the highest {label} ({first.scores[self.score]:.4f}) of the {len(models)} candidates that are not random "
            f"controls, on the {self.n_train} training examples" if len(models) > 1 else
            f"{first.name}, the only candidate that is not a random control, is picked ({label} {first.scores[self.score]:.4f}, on the "
            f"{self.n_train} training examples)"
        )  # (the conditional once took the controls' names with its second branch only: the first ended "the random control(s) ")
        return picked + "; the random control(s) " + ", ".join(f"{r.name} ({r.scores[self.score]:.4f})" for r in above) + " scored higher (see the warning)"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["best"], d["reason"] = self.best, self.reason()
        return d

    def table(self) -> str:
        """A plain-text table, best first; `*` marks the column the rows are sorted by."""
        names = [n for n in SCORES.names() if any(r.scores.get(n) is not None for r in self.rows)]
        head = ["#", "model"] + [SCORES.get(n).label + ("*" if n == self.score else "") for n in names] + ["dim", "features s", "scores s"]
        body = []
        for i, r in enumerate(self.rows, 1):
            vals = [f"{r.scores[n]:.4f}" if r.scores.get(n) is not None else "n/a" for n in names]
            feat = f"{r.features_s:.1f}" + (" (cached)" if r.cache_hit else "")
            body.append([str(i), r.name] + vals + [str(r.num_features), feat, f"{sum(r.scores_s.values()):.2f}"])
        widths = [max(len(row[j]) for row in [head] + body) for j in range(len(head))]
        fmt = lambda row: "  ".join(c.ljust(w) if j == 1 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
        hits = sum(r.cache_hit for r in self.rows)
        lines = [
            f"transferability of {len(self.rows)} models on {self.data} ({self.n_train} training examples, {len(self.classes)} classes), "
            f"sorted by {SCORES.get(self.score).label}",
            fmt(head),
            fmt(["-" * w for w in widths]),
            *map(fmt, body),
            f"features: {hits} of {len(self.rows)} from the cache; decoding {self.decode_s:.1f} s; ranking wall time {self.wall_s:.1f} s",
            *self.notes,
        ]
        return "\n".join(lines)


def default_candidates() -> list[str]:
    """Every registered backbone (the EfficientNet-Lites and the CIFAR ResNets)."""
    from .backbones import list_backbones

    return list_backbones()


def _check_candidates(candidates: Sequence[str], arch: str | None) -> list[str]:
    """Names checked before any model is built or image decoded: two or more, no repeats, each one
    a name `create_backbone` knows (registered, random:ARCH, timm:NAME, tv:NAME, run:DIR, file:PATH with
    `arch`; text folders and hub names are checked when built)."""
    names = [c.strip() for c in candidates if c and c.strip()]
    if len(names) < 2:
        got = f" (got only {names[0]!r})" if names else ""
        raise UserError(f"ranking needs two or more candidate models{got}; give them comma-separated, e.g. efficientnet_lite0,efficientnet_lite2 "
                        "(rank's --models, or fit's --candidates with --model auto)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"candidate(s) listed more than once: {', '.join(repeated)}")
    for n in names:
        if n.startswith("file:") and not arch:
            raise UserError(f"candidate {n} needs --arch NAME (the architecture of its checkpoint)")
        check_model_name(n, arch)
    return names


def check_model_name(n: str, arch: str | None) -> None:
    """A model name checked without building it (a UserError naming what is wrong): registered,
    random:ARCH, timm:NAME, tv:NAME, run:DIR, file:PATH (which needs `arch`); text folders and hub
    names are checked when built (folder, tokenizer, hub reachability)."""
    from .backbones import BACKBONES

    a = n[len("random:") :] if n.startswith("random:") else n
    if a.startswith("timm:"):
        _check_timm(a[len("timm:") :])
    elif a.startswith("tv:"):
        from .backbones.tv import check_name, parse

        check_name(parse(a[len("tv:") :])[0])
    elif n.startswith("run:"):
        from .backbones.run import run_meta

        run_meta(n[len("run:") :])  # a finished run directory, or a message that names the folder
    elif a.startswith(("hf:", "dir:")):
        return
    elif n.startswith("random:"):
        if a not in BACKBONES:
            _check_timm(a)
    elif n.startswith("file:"):
        if not Path(n[len("file:") :]).expanduser().is_file():
            raise UserError(f"--model {n}: no such file")
        if not arch:
            raise UserError(f"--model {n} needs --arch NAME (a name from `transferkit models` or a timm model)")
    else:
        BACKBONES.get(n)  # unknown name: UserError with close matches and the list


def _check_timm(name: str) -> None:
    import timm

    if not timm.is_model(name.split(".")[0]):
        from .backbones import list_backbones

        raise UserError(f"unknown model {name!r}{did_you_mean(name, list_backbones() + timm.list_models())}; see `transferkit models`")


def _build(name: str, arch: str | None, seed: int):
    """The backbone of a candidate. Random controls are drawn from `seed`, so the same control (and
    its cached features) comes back in a second ranking instead of a new random network each time."""
    import torch

    from .backbones import create_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_backbone(name, arch=arch if name.startswith("file:") else None)


# fit's settings that change how texts are read, cut and pooled: rank takes them to score as the fit after it
TEXT_SETTINGS = ("max_length", "text_column", "label_column", "delimiter", "encoding", "pooling")


def rank_models(
    data: str,
    candidates: Sequence[str],
    *,
    score: str = "logme",
    scores: Sequence[str] | None = None,
    arch: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    skip_bad_images: bool = False,
    device: str | None = None,
    batch_size: int = 32,
    input_size: int | None = None,
    log: Callable[[str], None] | None = None,
    precision: str = "auto",
    text: dict | None = None,
    shots: int | None = None,
    test_fraction: float | None = None,
    score_flag: str = "--score",
) -> Ranking:
    """Score every candidate on the training split of `data` and sort them best first by `score`.

    `scores` names what to compute (default: every registered score, those that need a source
    classifier only for models that have one). `val_fraction` and `seed` draw the same
    train/validation split as `fit` with those settings, so the scores see exactly the images `fit`
    trains on, and `fit`'s linear probe then reads the features this ranking cached. `input_size`
    overrides every candidate's own input size, as `fit --input-size` does. `precision` is `fit`'s
    (auto: bf16 autocast where the device computes bf16 natively), so that `fit` finds the features
    in its cache: the cache keeps each precision's features apart. `text`: fit's text settings by
    their flat names (max_length, text_column, label_column, delimiter, encoding, pooling), so that
    texts are read, cut and pooled as the fit after the ranking will. `shots` and `test_fraction` are
    fit's too: the scores see the examples that fit trains on, never those it holds out as a test split
    (`fit --model auto --test-fraction` chose its model with the test examples among its training ones).
    `score_flag`: the option that named `score`, for messages (fit's is --rank-score).
    """
    import torch

    from .config import RunConfig, TrainConfig, replace
    from .inputs import inputs_for, load_splits, modality_of

    t_start = time.perf_counter()
    log = log or (lambda msg: None)
    # ---- everything that can be wrong with the request, before any heavy work
    SCORES.get(score)
    checked = TrainConfig(precision=precision)
    checked.validate()  # fit's own check of the value
    precision = checked.precision  # fp32 read as no
    wanted = list(dict.fromkeys(scores)) if scores is not None else SCORES.names()
    for s in wanted:
        SCORES.get(s)
    if score not in wanted:
        wanted.append(score)
    names = _check_candidates(candidates, arch)
    kinds = {n: modality_of(n) for n in names}
    if len(set(kinds.values())) > 1:
        raise UserError(
            "the candidates mix image and text models (" + ", ".join(f"{n}: {k}" for n, k in kinds.items()) + "); rank models of one kind"
        )
    fitted_here = []
    for n in names:  # a run fitted on this very data has seen its labels: its scores are not a transfer estimate
        if n.startswith("run:") and _fitted_on(n[len("run:"):], data):
            fitted_here.append(f"note: {n} was fitted on {data}: its scores see examples it was trained on, so they overstate how well it transfers")
            log(fitted_here[-1])
    text = {k: v for k, v in (text or {}).items() if v is not None}
    unknown = sorted(set(text) - set(TEXT_SETTINGS))
    if unknown:
        raise UserError(f"rank's text settings are {', '.join(TEXT_SETTINGS)}; got {', '.join(unknown)}")
    base = replace(RunConfig(), data=data, model=names[0], seed=seed, val_fraction=val_fraction, skip_bad_images=skip_bad_images, input_size=input_size,
                   shots=shots, test_fraction=test_fraction, **text)
    base.validate()
    unused = [f"--{k.replace('_', '-')}" for k in ("max_length", "text_column", "delimiter", "pooling") if k in text]
    if unused and set(kinds.values()) == {"image"}:  # said, not ignored
        log(f"note: {', '.join(unused)} {'is' if len(unused) == 1 else 'are'} for text models; the candidates here read images")
    splits = load_splits(base)
    train = splits.train
    if len(np.unique(train.labels)) < 2:
        raise UserError(f"{splits.source}: the training data has fewer than two classes; ranking needs at least two")
    backbones = {n: _build(n, arch, seed) for n in names}
    for n, b in backbones.items():  # --pooling, as create_model sets it for fit (a run: keeps its own)
        if getattr(b, "modality", "image") == "text" and not n.startswith("run:"):
            b.pooling, b.spec = base.model.pooling, {**b.spec, "pooling": base.model.pooling}
    asked_source = [s for s in wanted if SCORES.get(s).needs_source_head and (s == score or scores is not None)]
    headless = [n for n, b in backbones.items() if b.source_head is None]
    if asked_source and headless:
        labels = " and ".join(SCORES.get(s).label for s in asked_source)
        raise UserError(
            f"{labels} {'need' if len(asked_source) > 1 else 'needs'} the source task's classifier, and these candidates have none: "
            f"{', '.join(headless)} (random controls, adapted backbones, text encoders, timm: models and checkpoints without a classifier have none); "
            f"scores that apply to every candidate here: {', '.join(scores_for(False))}"
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from .data import fingerprints
    from .fit import resolve_precision

    mp = resolve_precision(precision, cpu=torch.device(device).type == "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
    autocast = (lambda: torch.autocast(torch.device(device).type, dtype=dtype)) if dtype is not None else None
    log(
        f"ranking {len(names)} models on {splits.source}: {len(train)} training examples, {len(splits.classes)} classes "
        f"({', '.join(f'{c} {k}' for c, k in list(train.counts().items())[:10])}{', ...' if len(splits.classes) > 10 else ''}); "
        f"scores: {', '.join(wanted)}; sorted by {score}; device {device}" + (f" ({mp} features)" if dtype is not None else "")
    )

    # ---- features (images decoded once per image size, a size dropped after its last candidate;
    # texts tokenized per candidate, each with its own tokenizer)
    encoders = {n: inputs_for(base, b) for n, b in backbones.items()}
    need = {n: (e.pre.resize_size, e.pre.interpolation) if e.modality == "image" else ("text", n) for n, e in encoders.items()}
    decoded: dict[tuple, tuple] = {}
    decode_s = 0.0
    rows = []
    too_few: set[str] = set()  # cross-validated scores that the data has too few examples for
    # random controls: random:NAME, and models whose weights are an initialisation (small_convnet)
    controls = [n for n in names if n.startswith("random:") or str(backbones[n].weights_id).startswith("random")]
    for i, name in enumerate(names):
        bb = backbones[name]
        key = need[name]
        if key not in decoded:
            t0 = time.perf_counter()
            images, kept, bad = encoders[name].encode(train)
            decode_s += time.perf_counter() - t0
            if bad:
                log(f"left out {len(bad)} unreadable image(s): {'; '.join(bad[:3])}")
            decoded[key] = (images, kept.labels, fingerprints(kept.sources, encoders[name].modality == "text"))
        images, labels, keys = decoded[key]
        t0 = time.perf_counter()
        feats, hit = _features(bb, images, encoders[name].size, device=device, batch_size=batch_size, precision=mp, autocast=autocast)
        features_s = time.perf_counter() - t0
        logits = None
        if bb.source_head is not None:
            with torch.no_grad():
                logits = bb.source_head(feats).double().numpy()
        inputs = ScoreInputs(feats.double().numpy(), labels, logits, seed, keys)
        values: dict[str, float | None] = {}
        times: dict[str, float] = {}
        for s in wanted:
            if SCORES.get(s).needs_source_head and logits is None:
                values[s] = None
                continue
            t0 = time.perf_counter()
            try:
                values[s] = SCORES.get(s).compute(inputs)
            except TooFewForFolds:  # the other scores need no folds: they are still given (the ranking stopped here)
                if s == score:
                    raise UserError(f"{score_flag} {s} is cross-validated and needs at least 2 training examples in every class; "
                                    "sort by logme, or give more data") from None
                values[s] = None
                too_few.add(s)
            times[s] = round(time.perf_counter() - t0, 4)
        rows.append(ModelScores(name, values, int(feats.shape[1]), logits is not None, round(features_s, 3), times, hit))
        shown = ", ".join(f"{s} {v:.4f}" for s, v in values.items() if v is not None)
        log(f"  {name}: {feats.shape[1]}-d features {'from the cache' if hit else f'computed in {features_s:.1f} s'}; {shown}")
        backbones[name] = None  # free the weights; only the scores are kept
        if all(need[n] != key for n in names[i + 1 :]):
            del decoded[key]

    others = [s for s in wanted if s != score]
    rows = order_rows(rows, score, others)
    notes = list(fitted_here)  # (said at once too: --json's notes lacked it)
    if too_few:
        notes.append(f"note: {', '.join(sorted(too_few))} left out: cross-validated scores need at least 2 training examples in every class")
    saturated = [r for r in rows if r.num_features >= len(train) - 1]
    if controls and rows[-1].name not in controls:
        notes.append(_control_warning(rows, controls, score, saturated if score == "hscore" else [], score_flag))
    if "hscore" in wanted and saturated:
        dims = sorted({r.num_features for r in saturated})
        notes.append(
            f"note: H-score nears its ceiling of {len(splits.classes) - 1} (classes - 1) for models with nearly as many feature dimensions as "
            f"training examples, or more ({'/'.join(map(str, dims))} against {len(train)}), shrinkage or not; compare those by LogME instead"
        )
    return Ranking(splits.source, score, rows, len(train), splits.classes, round(decode_s, 3), round(time.perf_counter() - t_start, 3), notes, controls, others)


def order_rows(rows: list[ModelScores], score: str, tie_break: list[str]) -> list[ModelScores]:
    """Best first by `score`; a tie on it (kNN accuracy 0.9 and 0.9, one model under two names) is
    broken by the `tie_break` scores in turn, and a tie on all keeps the order the candidates were
    given in (stable). The first given was picked, and said to have "the highest" score."""
    return sorted(rows, key=lambda r: (-shown(r.scores[score]), *(-r.scores[s] if r.scores.get(s) is not None else math.inf for s in tie_break)))


def shown(v: float) -> float:
    """A score as the table shows it (4 decimals): two that print alike are a tie, broken by the other
    scores (LogME -0.77381 and -0.77384 were 'the highest' and next, printed the same)."""
    return round(v, 4)


def _features(backbone, images, size: int, *, device: str, batch_size: int, precision: str = "no", autocast=None):
    """Training features as `fit` evaluates: the centre crop at its input size, or texts up to max_length."""
    from .features import cached_features

    backbone.to(device)
    feats, hit = cached_features(backbone, images, size, device=device, batch_size=batch_size, precision=precision, autocast=autocast)
    return feats.float().cpu(), hit


def _control_warning(rows: list[ModelScores], controls: list[str], score: str, saturated: list[ModelScores], score_flag: str = "--score") -> str:
    """A random control above pretrained candidates: by the score, those look no better than random
    weights. The warning once said they "carry no more usable information" while the table's
    cross-validated accuracies ranked them above the control (MiniLM against random weights on SMS
    spam: LogME 0.19 for the control, LogReg 98.5% against 97.9% for MiniLM): such disagreement is said."""
    label = SCORES.get(score).label
    line = (f"warning: the random control(s) {', '.join(controls)} did not rank last by {label}: by this score, the candidates "
            "below them look no better than random weights on this data")
    first = min(i for i, r in enumerate(rows) if r.name in controls)
    below = [r for r in rows[first + 1:] if r.name not in controls]  # the candidates some control outscored
    accs = [s for s in ("knn", "logreg") if s != score and all(r.scores.get(s) is not None for r in rows)]
    best_control = {s: max(r.scores[s] for r in rows if r.name in controls) for s in accs}
    better = [r.name for r in below if accs and all(r.scores[s] > best_control[s] for s in accs)]
    if saturated and any(r.name in controls for r in saturated):
        line += "; but H-score is near its ceiling here (see the note), so this order says little"
    if better:
        cols = ", ".join(SCORES.get(s).label for s in accs)
        what = "the two accuracies disagree" if score in ("knn", "logreg") else "the score and the accuracies disagree"
        line += (f"; but the cross-validated {'accuracy' if len(accs) == 1 else 'accuracies'} ({cols}) rank {', '.join(better)} above every control: "
                 f"{what} here, so compare by {cols} ({score_flag} {accs[-1]}) or fit both")
    return line


def _fitted_on(run: str, data: str) -> bool:
    """Whether the run directory's config.yaml names `data` as its data (`evaluate.same_data`)."""
    import yaml

    from .evaluate import same_data

    try:
        used = ((yaml.safe_load((Path(run) / "config.yaml").read_text()) or {}).get("data") or {}).get("path")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return False
    return bool(used) and same_data(data, str(used))


def resolve_auto_model(cfg, console, *, show_table: bool = True):
    """`--model auto` (fit, search, lr-find): rank `cfg.model.candidates` by `cfg.model.rank_score`
    on the training split `fit` will use, say which won and why, and return the config with that model."""
    return auto_model(cfg, console, show_table=show_table)[0]


def auto_model(cfg, console, *, show_table: bool = True) -> tuple:
    """`resolve_auto_model`, and what to keep of the choice: the reason, and each candidate's scores
    (a run said why it chose its model on the console only)."""
    from .config import ModelConfig, replace
    from .text_data import is_text_spec

    if cfg.model.candidates == ModelConfig().candidates and is_text_spec(cfg.data.path):  # the default candidates are image models
        said = "minilm_l6, the packaged text model (--candidates hf:NAME,dir:PATH,... to rank others)"
        console.print(f"--model auto on text data: {said}")
        return replace(cfg, model="minilm_l6"), {"model": "minilm_l6", "reason": f"text data: {said}"}
    name, ranking = pick_model(
        cfg.data.path, cfg.model.candidates, score=cfg.model.rank_score, seed=cfg.train.seed, val_fraction=cfg.data.val_fraction,
        skip_bad_images=cfg.data.skip_bad_images, input_size=cfg.data.input_size, log=lambda m: console.print(m),
        device="cpu" if cfg.train.cpu else None, precision=cfg.train.precision,
        text=_text_settings(cfg), shots=cfg.data.shots, test_fraction=cfg.data.test_fraction, score_flag="--rank-score",
    )
    if show_table:
        console.print(ranking.table())
    else:  # the table's notes all the same: the reason may say "see the warning" (search and lr-find showed none)
        for note in ranking.notes:
            console.print(note, markup=False)
    console.print(f"--model auto: {ranking.reason()}")
    choice = {"model": name, "reason": ranking.reason(), "score": ranking.score, "n_train": ranking.n_train,
              "ranking": [{"model": r.name, **{k: v for k, v in r.scores.items() if v is not None}} for r in ranking.rows], "notes": ranking.notes}
    return replace(cfg, model=name), choice


def _text_settings(cfg) -> dict:
    """The run's text settings that differ from the defaults (the defaults are rank's own), for rank_models."""
    from .config import changed_settings

    return changed_settings(cfg, TEXT_SETTINGS)


def pick_model(data: str, candidates: Sequence[str], score: str = "logme", **kw) -> tuple[str, Ranking]:
    """The candidate to fine-tune (the best by `score`) and the full ranking behind the choice; `kw`
    goes to `rank_models` (seed, val_fraction, arch, log, ...)."""
    ranking = rank_models(data, candidates, score=score, **kw)
    return ranking.best, ranking
