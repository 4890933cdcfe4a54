"""`transferkit pipeline PIPELINE.yaml --out DIR`: named stages (source fit, adapt, target fit), each
its own run directory under DIR, run in dependency order; a rerun skips the stages already complete
from the same definition and data (DIR/pipeline_state.json), runs again a changed one and every
stage after it, and resumes (or redoes) an interrupted one.

    stages:
      - name: source
        kind: fit                   # fit | adapt
        data: digits:0-4
        model: small_convnet
        settings: {strategy: full, epochs: 10}     # any fit setting, flat names
      - name: target
        kind: fit
        data: digits:5-9
        model: stage:source         # the run of stage `source` (run:DIR/source)
        settings: {shots: 10, baseline: scratch}

`model` and `intermediate` (adapt) may name another stage as `stage:NAME`. Relative paths are read
from the current folder (as `fit --config` reads them), not from the pipeline file's.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from dataclasses import fields

from . import report
from .config import FLAT, RunConfig
from .errors import UserError, did_you_mean
from .rundir import MANIFEST, atomic_write_bytes, check_can_make, make_dir

KINDS = ("fit", "adapt")
KEYS = {"name", "kind", "data", "model", "settings", "intermediate", "epochs", "head_steps"}
# the settings `transferkit adapt` takes as flags (its --epochs and --head-steps are stage keys here)
ADAPT_SETTINGS = {"arch", "lr", "batch_size", "max_length", "text_column", "input_size", "seed", "cpu", "precision", "accumulate",
                  "grad_checkpointing", "group_by_length", "skip_bad_images", "encoding"}
ADAPT_READS = {FLAT[n] for n in ADAPT_SETTINGS}


def _setting_path(key, value) -> list[str]:
    """The dotted settings a `settings:` entry sets (a flat name, or a section of them); [] when
    unknown (config_from_dict says so)."""
    k = str(key).replace("-", "_")
    if k in {f.name for f in fields(RunConfig)} and isinstance(value, dict):
        return [f"{k}.{str(n).replace('-', '_')}" for n in value]
    return [FLAT[k]] if k in FLAT else []


def load_pipeline(path: str | Path) -> list[dict]:
    from .config import read_yaml

    p = Path(path)
    doc = read_yaml(p, "pipeline file")
    if isinstance(doc, dict):  # `settings:` beside `stages:` (meant for every stage) was dropped in silence
        for k in doc:
            if k != "stages":
                raise UserError(f"{p}: unknown key {str(k)!r}{did_you_mean(str(k), ['stages'])}: a pipeline file holds `stages:` only "
                                "(each stage its own settings: `settings: {...}` inside the stage)")
    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, list) or not stages:
        raise UserError(f"{p}: needs a non-empty `stages:` list")
    names = []
    for i, st in enumerate(stages):
        where = f"{p}: stage {i + 1}"
        if not isinstance(st, dict) or "name" not in st:
            raise UserError(f"{where}: each stage is a mapping with a `name`")
        if not isinstance(st["name"], str):
            raise UserError(f"{where}: `name` must be a word (it becomes a folder name), got {st['name']!r}")
        unknown = set(st) - KEYS
        if unknown:
            k = sorted(unknown)[0]
            raise UserError(f"{where} ({st['name']}): unknown key {k!r}{did_you_mean(k, KEYS)}")
        if st.get("kind", "fit") not in KINDS:
            raise UserError(f"{where} ({st['name']}): unknown stage kind {st.get('kind')!r}; use one of {', '.join(KINDS)}")
        for k in ("epochs", "head_steps"):  # adapt's own numbers; fit's go in `settings`
            if k in st and (isinstance(st[k], bool) or not isinstance(st[k], int)):
                raise UserError(f"{where} ({st['name']}): `{k}` must be a whole number, got {st[k]!r}")
        for k in ("data", "model"):
            if not st.get(k):
                raise UserError(f"{where} ({st['name']}): missing input `{k}`")
            if not isinstance(st[k], str):
                raise UserError(f"{where} ({st['name']}): `{k}` must be a path or a name (text), got {st[k]!r}")
        if st.get("kind", "fit") == "fit":
            for k in ("epochs", "head_steps", "intermediate"):
                if k in st:
                    fix = "put fit's in `settings: {epochs: N}`" if k == "epochs" else "it is for adapt stages"
                    raise UserError(f"{where} ({st['name']}): `{k}` at stage level is adapt's, not fit's ({fix})")
        settings = st.get("settings")
        if isinstance(settings, dict):
            for k in ("data", "model"):
                if k in settings:
                    raise UserError(f"{where} ({st['name']}): `{k}` goes at stage level (`{k}: ...`), not in `settings`")
            if st.get("kind") == "adapt" and "epochs" in settings:
                raise UserError(f"{where} ({st['name']}): an adapt stage takes its `epochs` at stage level (`epochs: N`, the masked-LM "
                                f"epochs of a text model; AdaBN on images makes one pass and takes none), not in `settings`")
            if st.get("kind") == "adapt":  # strategy, head, optimizer...: fit's, which adapt never read (run in silence as if honoured)
                unread = [k for k in settings if _setting_path(k, settings[k]) and not set(_setting_path(k, settings[k])) <= ADAPT_READS]
                if unread:
                    raise UserError(f"{where} ({st['name']}): an adapt stage does not read `{unread[0]}` (a fit setting; adapt reads "
                                    f"{', '.join(sorted(ADAPT_SETTINGS))})")
        if str(st["data"]).startswith("stage:"):
            raise UserError(f"{where} ({st['name']}): `data` cannot be a stage (a stage's output is a model: use it as `model: {st['data']}`)")
        if str(st["name"]) in names:
            raise UserError(f"{where}: stage name {st['name']!r} is used twice")
        if not str(st["name"]).replace("-", "_").isidentifier():
            raise UserError(f"{where}: stage name {st['name']!r}: use letters, digits, - and _ (it becomes a folder name)")
        names.append(str(st["name"]))
    for st in stages:
        for ref in _refs(st):
            if ref not in names:
                raise UserError(f"{p}: stage {st['name']!r} needs stage:{ref}, which is not defined{did_you_mean(ref, names)}")
    return _order(stages, p)


def _as_defined(st: dict) -> dict:
    """A stage's definition with its defaults written out: `kind: fit` given or left out (or
    `settings: {}`) is the same stage (it was run again as 'changed')."""
    d = {"kind": "fit", **st}
    if not d.get("settings"):
        d.pop("settings", None)
    if not d.get("intermediate"):
        d.pop("intermediate", None)
    return d


def _refs(st: dict) -> list[str]:
    return [str(st[k])[len("stage:") :] for k in ("model", "intermediate") if str(st.get(k, "")).startswith("stage:")]


def _order(stages: list[dict], where) -> list[dict]:
    """Dependency order, file order among independent stages; a cycle is an error naming it."""
    by = {str(s["name"]): s for s in stages}
    done, out, visiting = set(), [], []

    def visit(n):
        if n in done:
            return
        if n in visiting:
            cyc = visiting[visiting.index(n) :] + [n]
            raise UserError(f"{where}: the stages form a cycle: {' -> '.join(cyc)}")
        visiting.append(n)
        for r in _refs(by[n]):
            visit(r)
        visiting.pop()
        done.add(n)
        out.append(by[n])

    for s in stages:
        visit(str(s["name"]))
    return out


def run_pipeline(path: str | Path, out: str | Path, *, console=None, should_stop=None, should_abort=None) -> dict:
    """Run the stages of the pipeline file at `path` into `out` in dependency order. `should_stop` /
    `should_abort` go to every fit stage (as `fit`'s: Ctrl-C / SIGTERM checkpoint it and stop), and
    `should_stop` to an adapt stage (which stops at its next step, and starts again)."""
    from .adapt import adapt
    from .config import RunConfig, config_from_dict, replace
    from .fit import fit

    con = console or report.console()
    stages = load_pipeline(path)
    root = Path(out)
    check_can_make(root)  # made once every stage is checked: a refused pipeline left an empty --out folder

    def resolve(v):
        v = str(v)
        return f"run:{root / v[len('stage:'):]}" if v.startswith("stage:") else v

    # Every stage's settings, data and model are checked before the first stage runs (a typo in the
    # last stage is not found after the first has trained for an hour).
    configs = {}
    for st in stages:
        name = str(st["name"])
        settings = st.get("settings") or {}
        if not isinstance(settings, dict):
            raise UserError(f"{path}: stage {name!r}: `settings` must be a mapping of fit settings")
        try:
            cfg = replace(config_from_dict(settings, where=f"{path}: stage {name}") if settings else RunConfig(), data=resolve(st["data"]), model=resolve(st["model"]))
            cfg.validate()
            _check_inputs(st, cfg)
        except UserError as e:
            msg = str(e)
            raise UserError(msg if msg.startswith(str(path)) else f"{path}: stage {name}: {msg}") from None
        configs[name] = cfg
        if st.get("kind", "fit") == "fit" and settings:  # said as fit says a --config file's (they were silent here)
            from .config import changed_settings
            from .strategies import ignored_settings

            for n, (what, own, users) in ignored_settings(cfg, set(changed_settings(config_from_dict(settings)))).items():
                con.print(f"[yellow]note[/]: stage {name}: {n} is not used by {what} {own} (only by {users})")
    by_name = {str(st["name"]): st for st in stages}
    for st in stages:  # text data for an image chain, or images for a text one: said now, not after the earlier stages trained
        root_model = _root_model(st, by_name)
        if not root_model.startswith("stage:") and root_model != "auto":  # (auto picks its candidates by the data)
            try:
                _check_kind(configs[str(st["name"])].data.path, root_model, str(st["model"]))
            except UserError as e:
                raise UserError(f"{path}: stage {st['name']}: {e}") from None
    for st in stages:  # --baseline base on a chain that starts from random weights: said now, not after the first stages trained
        if "base" not in configs[str(st["name"])].train.baselines:
            continue
        root_model = _root_model(st, by_name)
        if root_model in RANDOM_MODELS or root_model.startswith("random:"):
            raise UserError(f"{path}: stage {st['name']}: baseline base would fine-tune the model its stages start from, {root_model}, which has "
                            "random weights: that is training from scratch (use baseline: scratch)")

    # A stage runs again when its definition (settings, data, model, epochs) differs from the one it
    # ran from, when a stage it builds on has a run other than the one it was built from (redone in
    # this call or an earlier one), or when its folder's run is not the one its record describes (a
    # later attempt failed or was stopped): a rerun skips only what would come out the same. What a
    # stage runs from is written before it starts, so that an interrupted stage resumes only unchanged.
    make_dir(root)
    state_file = root / "pipeline_state.json"
    ran_from = _read_state(state_file)
    if ran_from is None:
        con.print(f"[yellow]note[/]: {state_file} cannot be read: each complete stage is taken as run from its definition as it is now; "
                  f"remove a stage's folder under {root} to run it again")
        ran_from = {}

    def save_state():
        atomic_write_bytes(state_file, (json.dumps(ran_from, indent=1) + "\n").encode())

    summary = {}
    redone: set[str] = set()  # stages run in this call: what an older record without upstream runs is checked against
    for st in stages:
        name, kind = str(st["name"]), st.get("kind", "fit")
        d = root / name
        now = {"definition": json.loads(json.dumps(st, default=str)), "upstream": {r: _run_identity(root / r) for r in _refs(st)}, "run": None,
               "data": _data_identity(configs[name].data.path, resolve(st["intermediate"]) if st.get("intermediate") else None),
               "model": _model_identity(str(st["model"]))}
        current = _run_identity(d)  # None unless the folder holds a complete run
        before = ran_from.get(name)
        if before is None and current:  # finished before this file was kept: taken as run from what is there now
            before = {**now, "run": current}
        changed = before is not None and _as_defined(before["definition"]) != _as_defined(now["definition"])
        # its files added, removed or rewritten since it ran (a rerun skipped a stage whose data had 10 more images)
        data_changed = before is not None and before.get("data") is not None and before["data"] != now["data"]
        # a model outside the pipeline (run:, file:, dir:) trained or saved again since: the stage was skipped on the old weights
        model_changed = before is not None and before.get("model") is not None and before["model"] != now["model"]
        known = before is not None and before.get("upstream") is not None
        # (a stage that never ran has no run to redo: it was said to run "again" as its upstream had another run)
        moved = [r for r in now["upstream"] if before is not None and ((known and before["upstream"].get(r) != now["upstream"][r]) or (not known and r in redone))]
        stale = current is not None and before is not None and before.get("run", current) != current
        if stale and before.get("run") is None and before.get("started") and (d / MANIFEST).stat().st_mtime > before["started"]:
            # finished after its last attempt began: `fit --resume` of the stopped stage, as predict and evaluate advise
            con.print(f"[bold]stage {name}[/]: its last attempt was finished since (fit --resume)")
            before, stale = {**before, "run": current}, False
        if current and not (changed or moved or stale or data_changed or model_changed):
            con.print(f"[bold]stage {name}[/]: complete, skipped ({d})")
            summary[name] = {"status": "skipped (complete)", **_brief(d)}
            # an older file's record knew no upstream runs, own run or data: from now on, those it has now
            ran_from[name] = {**before, "upstream": now["upstream"] if before.get("upstream") is None else before["upstream"], "run": current,
                              "data": before.get("data") or now["data"], "model": before.get("model") or now["model"]}
            continue
        if changed or moved or stale or data_changed or model_changed:
            attempt = "its last attempt" if current is None else "it ran"  # a stage that failed or was stopped never ran to the end
            why = (f"its definition changed since {attempt}" if changed else f"stage {', '.join(moved)} has another run than the one it was built from"
                   if moved else f"its data ({configs[name].data.path}) changed since {attempt}" if data_changed
                   else f"its model ({st['model']}) changed since {attempt}" if model_changed
                   else "its last attempt did not finish, and its finished run is from before that")
            con.print(f"[bold]stage {name}[/]: {why}: running it {'again' if current is not None else 'from the start'}")
            shutil.rmtree(d / "checkpoints", ignore_errors=True)  # no resuming from the old definition's checkpoint
        cfg = configs[name]
        con.print(f"[bold]stage {name}[/] ({kind}): {cfg.data.path} with {cfg.model.name}")
        ran_from[name] = {**now, "started": time.time()}
        now = ran_from[name]
        redone.add(name)
        save_state()
        try:
            if kind == "adapt":
                inter = st.get("intermediate")
                given = {p for k, v in (st.get("settings") or {}).items() for p in _setting_path(k, v)}
                adapt(cfg, d, intermediate=resolve(inter) if inter else None, epochs=st.get("epochs", 1), head_steps=st.get("head_steps"),
                      console=con, overwrite=True, should_stop=should_stop,  # AdaBN's batches as `adapt --batch-size` sets them (64 was kept)
                      adabn_batch_size=cfg.train.batch_size if "train.batch_size" in given else 64)
            elif (d / "config.yaml").is_file() and (d / "checkpoints").is_dir():
                con.print(f"stage {name}: interrupted before; resuming")
                fit(cfg, d, resume=True, console=con, should_stop=should_stop, should_abort=should_abort)
            else:
                fit(cfg, d, overwrite=True, console=con, should_stop=should_stop, should_abort=should_abort)
        except UserError as e:  # which stage of which file (of the same kind: a process's own error is said by it)
            raise type(e)(f"{path}: stage {name}: {e}") from None
        now["run"] = _run_identity(d)
        save_state()
        summary[name] = {"status": "ran", **_brief(d)}
    save_state()
    (root / "pipeline.json").write_text(json.dumps({"stages": summary}, indent=1) + "\n")
    return summary


def _root_model(st: dict, by_name: dict) -> str:
    """The model a chain of `stage:` models starts from."""
    root_model, seen = str(st["model"]), set()
    while root_model.startswith("stage:") and root_model[len("stage:"):] in by_name and root_model not in seen:
        seen.add(root_model)
        root_model = str(by_name[root_model[len("stage:"):]]["model"])
    return root_model


def _check_kind(data: str, root_model: str, model: str) -> None:
    """Data of the other kind than the model a stage's chain starts from (images or texts)."""
    from .inputs import modality_of, refuse_image_data, refuse_text_data

    try:
        kind = modality_of(root_model)
    except UserError:  # an unreadable run: said by the stage's own checks
        return
    via = "" if model == root_model else f" (through {model}, which starts from {root_model})"
    if kind == "text":
        try:
            refuse_image_data(data, root_model)
        except UserError as e:
            raise UserError(f"{e}{via}") from None
    else:
        refuse_text_data(data, root_model, via)


RANDOM_MODELS = ("small_convnet",)  # models whose weights are an initialisation (besides random:NAME)


def _read_state(state_file: Path) -> dict | None:
    """pipeline_state.json: per stage, the definition it ran from, the runs (manifest digests) of the
    stages it builds on, and its own run once finished (None while running). An older file held the
    definition alone: its upstream and run are unknown, and trusted. None when it cannot be read."""
    try:
        raw = json.loads(state_file.read_text()) if state_file.is_file() else {}
    except (ValueError, OSError):
        return None
    if not isinstance(raw, dict):
        return None
    return {k: v if isinstance(v, dict) and "definition" in v else {"definition": v, "upstream": None} for k, v in raw.items()}


def _data_identity(*specs: str | None) -> str | None:
    """What a stage's data is now, as make judges a file: every file's path (relative to the data's
    folder), size and modification time (no content read), hashed; a folder's files through linked
    folders too (a class folder that is a link was not walked), and the images an image CSV's path
    column names (a CSV of image paths changed only when the CSV did). None when no spec is a path
    that exists (built-in data)."""
    import hashlib
    import os

    h, seen = hashlib.sha256(), False

    def add(f: Path, name: str) -> None:
        try:
            s = f.stat()
        except OSError:  # gone since it was listed
            return
        h.update(f"{name}\0{s.st_size}\0{s.st_mtime_ns}\n".encode())

    for spec in specs:
        p = Path(str(spec)).expanduser() if spec else None
        if p is None or not p.exists():
            continue
        seen = True
        for f in _listed_files(p):
            add(f, os.path.relpath(f, p) if f != p else f.name)
        if p.is_file() and p.suffix.lower() == ".csv":
            for cell in _csv_image_paths(p):
                f = Path(cell) if Path(cell).is_absolute() else p.parent / cell
                add(f, cell)
    return h.hexdigest()[:16] if seen else None


def _csv_image_paths(p: Path):
    """The cells of an image CSV's path column, streamed (a text CSV, without one, costs a header read)."""
    import csv

    from .data import PATH_NAMES

    with open(p, "rb") as b:
        bom = b.read(2)
    encoding = "utf-16" if bom in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        with open(p, newline="", encoding=encoding, errors="replace") as f:
            reader = csv.reader(f)
            header = [c.strip().lower() for c in next(reader, [])]
            col = next((header.index(n) for n in PATH_NAMES if n in header), None)
            if col is None:
                return
            for row in reader:
                if len(row) > col and row[col].strip():
                    yield row[col].strip()
    except (OSError, csv.Error):
        return


def _listed_files(p: Path) -> list[Path]:
    """A file, or the files of a folder the data reads, following linked folders (each real folder
    once: no cycles): hidden files and folders (`.DS_Store`, `__MACOSX`) never, and in a folder of
    images, images only. A `.DS_Store` Finder wrote, or a NOTES.txt beside the class folders, made the
    stage and every stage after it train again."""
    import os

    from .data import IMAGE_SUFFIXES, _hidden
    from .text_data import TEXT_SUFFIXES

    if p.is_file():
        return [p]
    out, real = [], set()
    for root, dirs, files in os.walk(p, followlinks=True):
        r = os.path.realpath(root)
        if r in real:
            dirs[:] = []
            continue
        real.add(r)
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        out += [Path(root) / f for f in sorted(files) if not _hidden(f)]
    images = [f for f in out if f.suffix.lower() in IMAGE_SUFFIXES]
    return images or [f for f in out if f.suffix.lower() in TEXT_SUFFIXES]


def _model_identity(model: str) -> str | None:
    """What a stage's model outside the pipeline is now: a run's manifest digest, a checkpoint file's
    or a model folder's files' sizes and modification times; None for a stage, a registered or hub
    name, or random weights (nothing on disk to change)."""
    import hashlib
    import os

    if model.startswith(("stage:", "random:")):
        return None
    kind, _, path = model.partition(":")
    p = Path(path).expanduser()
    if kind == "run" and p.is_dir():
        return _run_identity(p)
    if kind not in ("file", "dir") or not p.exists():
        return None
    h = hashlib.sha256()
    for f in [p] if p.is_file() else sorted(Path(r) / n for r, _, ns in os.walk(p, followlinks=True) for n in ns):
        try:
            st = f.stat()
        except OSError:
            continue
        h.update(f"{os.path.relpath(f, p) if f != p else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _run_identity(d: Path) -> str | None:
    """Which run a stage's folder holds: the digest of its manifest (every file's sha256 and when it
    completed); None while it is not complete."""
    import hashlib

    m = d / "manifest.json"
    return hashlib.sha256(m.read_bytes()).hexdigest()[:16] if m.is_file() else None


def _check_inputs(st: dict, cfg) -> None:
    """A stage's data and model, checked before any stage runs (a stage:NAME model is made by then)."""
    from .data import is_builtin
    from .ranking import check_model_name

    for what, spec in (("data", cfg.data.path), ("intermediate", st.get("intermediate"))):
        if spec is not None and not str(spec).startswith("stage:") and not is_builtin(str(spec)) and not Path(str(spec)).expanduser().exists():
            raise UserError(f"{what} not found: {spec} (a relative path is read from the current folder, {Path.cwd()})")
    if not str(st["model"]).startswith("stage:"):
        check_model_name(cfg.model.name, cfg.model.arch)
    if "base" in cfg.train.baselines and not cfg.model.name.startswith("run:"):  # fit says so only after this stage's training
        raise UserError(f"baseline base fine-tunes the model a run started from, to show whether its source stage helped; the model "
                        f"{st['model']} is not a run or a stage (use model: stage:NAME, or baseline: scratch)")


def _brief(d: Path) -> dict:
    m = d / "metrics.json"
    if not m.is_file():
        return {"run": str(d)}
    x = json.loads(m.read_text())
    return {"run": str(d), "accuracy": x.get("accuracy"), "verdict": x.get("verdict"), "verdict_scratch": x.get("verdict_scratch"), "verdict_base": x.get("verdict_base")}
