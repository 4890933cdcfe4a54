"""Training checkpoints that survive any kill.

Each checkpoint is one file written to a temporary name, flushed and renamed; `checkpoints.json`,
rewritten the same way afterwards, lists the good ones with their sha256. Loading takes the newest
listed checkpoint whose bytes match its hash and falls back to the one before it, so a kill in the
middle of a write, or a truncated or altered file, costs at most one checkpoint, never the run.

Files are read with `torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts only,
never code.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import sys
from pathlib import Path

import torch

from .errors import UserError
from .rundir import atomic_write_bytes

INDEX = "checkpoints.json"


class Checkpointer:
    def __init__(self, folder: str | Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    def _index(self) -> list[dict]:
        p = self.folder / INDEX
        if not p.is_file():
            return []
        try:
            entries = json.loads(p.read_text())["checkpoints"]
        except (ValueError, KeyError, TypeError):  # TypeError: JSON of another shape (`[]`), a traceback on --resume
            return []
        return entries if isinstance(entries, list) and all(isinstance(e, dict) and isinstance(e.get("file"), str) for e in entries) else []

    def save(self, state: dict, tag: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        path = self.folder / f"ckpt-{tag}.pt"
        entries = [e for e in self._index() if e["file"] != path.name] + [{"file": path.name, "sha256": hashlib.sha256(data).hexdigest()}]
        stale, entries = entries[: -self.keep], entries[-self.keep :]
        try:
            atomic_write_bytes(path, data)
            atomic_write_bytes(self.folder / INDEX, (json.dumps({"checkpoints": entries}, indent=1) + "\n").encode())
        except OSError as e:
            prev = [e_["file"] for e_ in self._index() if e_["file"] != path.name]
            kept = f"the previous checkpoint ({prev[-1]}) is intact" if prev else "there is no earlier checkpoint"
            raise UserError(
                f"could not write checkpoint {path} ({e.strerror or e}{'; the disk is full' if getattr(e, 'errno', None) == errno.ENOSPC else ''}); "
                f"{kept}. Free some space, then continue with: transferkit fit --resume {self.folder.parent}"
            ) from None
        for e in stale:
            (self.folder / e["file"]).unlink(missing_ok=True)
        return path

    def load_latest(self, log=None) -> dict | None:
        """The newest checkpoint that is intact, or None. Damaged ones are reported and skipped."""
        log = log or (lambda msg: print(msg, file=sys.stderr))
        entries = self._index()
        if not entries and (self.folder / INDEX).is_file():  # a damaged index: the files themselves, newest first (no sha256 to check)
            entries = [{"file": f.name, "sha256": None} for f in sorted(self.folder.glob("ckpt-*.pt"))]
            if entries:
                log(f"{self.folder / INDEX} is damaged: trying the checkpoint files themselves, newest first")
        for e in reversed(entries):
            p = self.folder / e["file"]
            if not p.is_file():
                log(f"checkpoint {p} is missing; trying the previous one")
                continue
            data = p.read_bytes()
            if e["sha256"] is not None and hashlib.sha256(data).hexdigest() != e["sha256"]:
                log(f"checkpoint {p} is damaged (sha256 mismatch: truncated or altered); using the previous one")
                continue
            try:
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception as ex:  # not a checkpoint of tensors (never unpickled), or damaged
                log(f"checkpoint {p} cannot be loaded ({type(ex).__name__}); trying the previous one")
        return None
