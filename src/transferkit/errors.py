"""User-facing errors.

A `UserError` is a mistake in what the user gave us (a path, a name, a value). The CLI prints its
message and exits with code 2, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from contextvars import ContextVar

# Set while the command line runs: messages keep its flags (--val-fraction); the Python API, called
# from a user's code, says them as keyword arguments (api.python_words).
COMMAND_LINE: ContextVar[bool] = ContextVar("transferkit_command_line", default=False)


class UserError(Exception):
    """A problem with the user's input, reported as a short message and exit code 2."""


class ProcessUserError(UserError):
    """A UserError that one process of several meets alone (out of memory on its own device): said by
    that process, where the others' errors, the same in each, are said by the first only."""


def first_process() -> bool:
    """Whether this is the only process, or the first of several (`torchrun`, `accelerate launch`), by
    the launcher's environment: the process that speaks for all of them. A lone process whose
    environment sets RANK (a cluster's worker) is the only one."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or os.environ.get("RANK", "0") == "0"


class Diverged(UserError):
    """Training whose loss turned NaN or infinite with nothing finite to keep: a learning rate far too
    high. A user error for `fit`; a losing trial, not a failed one, for `search`."""


# Other libraries' names for settings (Keras, Hugging Face, PyTorch), suggested first when offered.
ALIASES = {"learning_rate": "lr", "num_epochs": "epochs", "num_train_epochs": "epochs", "n_epochs": "epochs", "batchsize": "batch_size",
           "per_device_train_batch_size": "batch_size", "bs": "batch_size", "optim": "optimizer", "scheduler": "schedule",
           "lr_scheduler_type": "schedule", "warmup": "warmup_epochs", "max_seq_length": "max_length", "model_name": "model"}


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """warnings.warn, pointed at the first frame outside transferkit: the user's line that called the
    API, however deep inside it the warning arose (a fixed stacklevel pointed into the package, at a
    wrapper, once a method was wrapped). Python 3.12's skip_file_prefixes does this; 3.10 and 3.11
    lack it."""
    import os
    import sys
    import warnings

    package, level = os.path.dirname(os.path.abspath(__file__)), 2
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def did_you_mean(value: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest names, or '' when nothing is close; another
    library's name for a setting (learning_rate) suggests ours (lr) first."""
    choices = [c for c in choices if c != value]  # the name refused is no suggestion (optim: "did you mean: optimizer, optim?")
    key = str(value).replace("-", "_").lower()
    alias = ALIASES.get(key) or ALIASES.get(next(iter(difflib.get_close_matches(key, list(ALIASES), n=1, cutoff=0.85)), ""))  # lerning_rate: lr
    if alias not in choices:  # the same name in another case (LogME, as the table spells it, for logme)
        alias = next((c for c in choices if str(c).lower() == str(value).lower()), alias)
    close = ([alias] if alias in choices else []) + [c for c in difflib.get_close_matches(value, choices, n=n, cutoff=0.5) if c != alias]
    close = close[:n]
    return f" (did you mean: {', '.join(close)}?)" if close else ""
