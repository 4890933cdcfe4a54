"""Classical baselines computed beside every run, so the gain from transfer is always visible."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def pixel_vectors(images: torch.Tensor, side: int = 16) -> np.ndarray:
    """uint8 (N, 3, H, W) -> (N, 3*side*side) float pixels, area-downsampled, in chunks (the images
    may be a memory-mapped cache far larger than memory)."""
    out = []
    for i in range(0, len(images), 256):
        x = images[i : i + 256].float() / 255.0
        if x.shape[-1] > side:
            x = F.interpolate(x, size=(side, side), mode="area")
        out.append(x.flatten(1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 3 * side * side), np.float32)


def _logreg(Cs: list[float], y_train: np.ndarray, seed: int, class_weight: str | None = None):
    """Logistic regression with C chosen from `Cs` by stratified k-fold cross-validation of balanced
    accuracy (k = 3, or the smallest class's count); with one example in some class (`--shots 1`) no fold split exists,
    and the middle of `Cs` is taken."""
    from sklearn.linear_model import LogisticRegression

    counts = np.bincount(y_train)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        return LogisticRegression(C=Cs[len(Cs) // 2], max_iter=2000, random_state=seed, class_weight=class_weight)
    return LogisticRegressionCV(Cs=Cs, cv=min(3, smallest), max_iter=2000, random_state=seed, class_weight=class_weight, scoring="balanced_accuracy")


def _fit_best(make, X, y_train: np.ndarray):
    """`make(class_weight)` fitted on (X, y) with class weights none and balanced, the one with the
    better cross-validated balanced accuracy kept (none on a tie, and alone on balanced classes), C
    chosen by the same score. Chosen by plain accuracy, a small imbalanced set often took the
    strongest regularisation, which predicts the majority class alone (TF-IDF on 200 SST-2 phrases:
    53% on dev, always "positive"): a baseline that weak overstates what transfer gains."""
    def cv_score(model) -> float:
        lr = model[-1]
        return max(float(v.mean(0).max()) for v in lr.scores_.values()) if hasattr(lr, "scores_") else 0.0

    with warnings.catch_warnings():  # scikit-learn 1.9 announces default changes of LogisticRegressionCV
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)  # tiny classes: CV still runs
        plain = make(None).fit(X, y_train)
        if len(set(np.bincount(y_train)[np.bincount(y_train) > 0].tolist())) == 1:
            return plain  # balanced classes: the weights would be all equal
        weighted = make("balanced").fit(X, y_train)
    return weighted if cv_score(weighted) > cv_score(plain) else plain


def raw_pixel_logreg(train_images: torch.Tensor, y_train: np.ndarray, eval_images: torch.Tensor, *, seed: int = 0) -> np.ndarray:
    """Standardised raw pixels (16x16) -> logistic regression with its regularisation chosen by 3-fold
    cross-validation on the training split, so the baseline is a fair one. Returns class
    probabilities on `eval_images`, one column per class of the training labels (0..K-1)."""
    clf = _fit_best(lambda cw: make_pipeline(StandardScaler(), _logreg([0.01, 0.1, 1.0], y_train, seed, cw)), pixel_vectors(train_images), y_train)
    proba = np.zeros((len(eval_images), int(y_train.max()) + 1))
    proba[:, clf.classes_] = clf.predict_proba(pixel_vectors(eval_images))
    return proba


def tfidf_logreg(train_texts: list[str], y_train: np.ndarray, eval_texts: list[str], *, seed: int = 0) -> np.ndarray:
    """TF-IDF of word 1-2-grams (sublinear tf) -> logistic regression, its regularisation chosen by
    3-fold cross-validation on the training split. Probabilities on `eval_texts`, one column per class."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    clf = _fit_best(lambda cw: make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, max_features=200_000),
        _logreg([0.1, 1.0, 10.0, 100.0], y_train, seed, cw),
    ), list(train_texts), y_train)
    proba = np.zeros((len(eval_texts), int(y_train.max()) + 1))
    proba[:, clf.classes_] = clf.predict_proba(list(eval_texts))
    return proba
