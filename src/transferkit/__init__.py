"""transferkit: a pretrained model plus a small labelled dataset -> the best model it can get."""

__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .errors import UserError  # noqa: E402

__all__ = ["ImageClassifier", "TextClassifier", "RunConfig", "UserError", "__version__"]


def __getattr__(name: str):
    # The classifiers import PyTorch (about 2 s); loaded when first used, so that the command line's
    # --help, listings and argument errors answer at once (PEP 562).
    if name in ("ImageClassifier", "TextClassifier"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
