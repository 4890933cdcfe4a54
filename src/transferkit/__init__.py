"""transferkit: a pretrained model plus a small labelled dataset -> the best model it can get."""

__version__ = "0.1.0"

from .api import ImageClassifier, TextClassifier  # noqa: E402
from .config import RunConfig  # noqa: E402
from .errors import UserError  # noqa: E402

__all__ = ["ImageClassifier", "TextClassifier", "RunConfig", "UserError", "__version__"]
