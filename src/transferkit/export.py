"""Export a finished run to ONNX, to serve it without transferkit or PyTorch (onnxruntime, which the
export is checked with, or another ONNX runtime).

The graph does transferkit's own preprocessing, so it gives what `transferkit predict` gives:
- images: `image`, uint8 (N, 3, R, R) RGB, the photo with its shorter side resized to R and the
  centre R x R kept (R = `resize_size` in export.json); the graph crops the centre S x S, normalises
  with the backbone's mean and std, and runs backbone and head;
- texts: `input_ids` and `attention_mask`, int64 (N, L), as the tokenizer saved beside the model
  gives them (`tokenizers` or `transformers` can load it);
- outputs: `logits` and `probs` (softmax), float32 (N, classes), classes in export.json's order.

Every export is checked before it is kept: onnxruntime runs the file on inputs of another batch size
than the one traced, and the export fails if a class differs or a probability moves by more than
1e-4 from PyTorch's. `--data` also compares accuracy and speed on labelled data.

We use PyTorch's own exporter (`torch.onnx.export(dynamo=True)`, through torch.export) and
onnxruntime to check; both are optional dependencies (`pip install 'transferkit[export]'`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .rundir import make_dir

PROB_TOLERANCE = 1e-4


class ImageGraph(nn.Module):
    """uint8 (N, 3, R, R) -> (logits, probs): centre crop, normalise, backbone, head."""

    def __init__(self, model: nn.Module, pre):
        super().__init__()
        self.model, self.pre = model, pre

    def forward(self, image: torch.Tensor):
        from .transforms import center_crop, normalize

        logits = self.model(normalize(center_crop(image, self.pre.input_size), self.pre.mean, self.pre.std))
        return logits, logits.softmax(-1)


class TextGraph(nn.Module):
    """(input_ids, attention_mask) int64 (N, L) -> (logits, probs). The backbone reads padding as -1."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        from .backbones.text import PAD

        logits = self.model(torch.where(attention_mask > 0, input_ids, torch.full_like(input_ids, PAD)))
        return logits, logits.softmax(-1)


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise UserError(f"export needs onnx, onnxscript and onnxruntime ({e.name} is missing): pip install 'transferkit[export]'") from None


def text_arrays(x: torch.Tensor, pad_id: int) -> dict[str, np.ndarray]:
    """transferkit's (N, L) ids padded with -1 -> the tokenizer's input_ids and attention_mask."""
    mask = x >= 0
    return {"input_ids": torch.where(mask, x, torch.full_like(x, pad_id)).numpy(), "attention_mask": mask.long().numpy()}


def _sample_inputs(clf, n: int, seed: int) -> dict[str, np.ndarray]:
    """n inputs to trace or check with: random images, or texts of different lengths."""
    g = torch.Generator().manual_seed(seed)
    if clf.inputs_.modality == "text":
        words = ["good", "bad", "the", "film", "was", "not", "really", "great", "awful", "service", "free", "call"]
        texts = [" ".join(words[int(j)] for j in torch.randint(len(words), (3 + 5 * i,), generator=g)) for i in range(n)]
        x, _ = clf._encode(texts)
        return text_arrays(x, clf.model_.backbone.pad_id)
    r = clf.preprocess_.resize_size
    return {"image": torch.randint(0, 256, (n, 3, r, r), dtype=torch.uint8, generator=g).numpy()}


def _torch_run(graph: nn.Module, arrays: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return graph(*(torch.from_numpy(a) for a in arrays.values()))[1].float().numpy()


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_run(session, arrays: dict[str, np.ndarray]) -> np.ndarray:
    return session.run(["probs"], arrays)[0]


def compare(p_torch: np.ndarray, p_onnx: np.ndarray) -> dict:
    """Largest probability difference and class agreement. A class may differ only where PyTorch's
    top two probabilities are within the tolerance (a near-tie that rounding can flip)."""
    diff = float(np.abs(p_torch - p_onnx).max()) if p_torch.size else 0.0
    differs = p_torch.argmax(1) != p_onnx.argmax(1)
    top2 = np.sort(p_torch, axis=1)[:, -2:] if p_torch.shape[1] > 1 else np.zeros((len(p_torch), 2))
    real = differs & (top2[:, 1] - top2[:, 0] > PROB_TOLERANCE)
    return {"inputs": len(p_torch), "max_abs_diff_probs": diff, "same_class": int((~differs).sum()), "ok": not real.any() and diff <= PROB_TOLERANCE}


def _batched(arrays: dict[str, np.ndarray], batch: int):
    n = len(next(iter(arrays.values())))
    for i in range(0, n, batch):
        part = {k: v[i : i + batch] for k, v in arrays.items()}
        if "attention_mask" in part:  # dynamic padding, as transferkit batches texts
            width = max(int(part["attention_mask"].sum(1).max()), 1)
            part = {k: v[:, :width] for k, v in part.items()}
        yield part


def _timed(run, arrays, batch: int) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = np.concatenate([run(part) for part in _batched(arrays, batch)])
    return out, time.perf_counter() - t


def _feed(clf, encoded: torch.Tensor) -> dict[str, np.ndarray]:
    """The export's inputs for a classifier's encoded examples (uint8 images, or ids padded with -1)."""
    return text_arrays(encoded, clf.model_.backbone.pad_id) if clf.inputs_.modality == "text" else {"image": encoded.numpy()}


def check_on_data(clf, graph: nn.Module, session, labelled, batch: int = 64) -> dict:
    """Accuracy and speed of PyTorch and of the ONNX file on labelled data (`evaluate.labelled_set`'s
    (examples, description))."""
    from .metrics import classification_metrics

    s, where = labelled
    x, s, _ = clf.inputs_.encode(s)
    arrays = _feed(clf, x)
    p_torch, t_torch = _timed(lambda a: _torch_run(graph, a), arrays, batch)
    p_onnx, t_onnx = _timed(lambda a: _ort_run(session, a), arrays, batch)
    acc = {name: classification_metrics(s.labels, p, clf.class_names_)["accuracy"] for name, p in (("pytorch", p_torch), ("onnx", p_onnx))}
    n = len(s.labels)
    return {
        "data": where, "n": n, "batch_size": batch, "threads": torch.get_num_threads(),
        "accuracy_pytorch": acc["pytorch"], "accuracy_onnx": acc["onnx"],
        "seconds_pytorch": t_torch, "seconds_onnx": t_onnx,
        "per_second_pytorch": n / t_torch, "per_second_onnx": n / t_onnx,
        **{k: v for k, v in compare(p_torch, p_onnx).items() if k != "inputs"},
    }


def export_onnx(run_dir: str | Path, out: str | Path | None = None, *, overwrite: bool = False, data: str | None = None, opset: int | None = None) -> dict:
    """Export a finished run directory to `out` (default RUN_DIR/export/); see `export_classifier`."""
    from .api import ImageClassifier

    _require_onnx()
    clf = ImageClassifier.load(run_dir)  # an ImageClassifier or a TextClassifier, as the run is
    return export_classifier(clf, Path(out) if out is not None else Path(run_dir) / "export", overwrite=overwrite, data=data, opset=opset, run=str(Path(run_dir).resolve()))


def export_classifier(clf, out: str | Path, *, overwrite: bool = False, data: str | None = None, opset: int | None = None, run: str | None = None) -> dict:
    """Write the folder `out`: model.onnx, export.json (inputs, classes, preprocessing, the check's
    figures) and, for text, tokenizer/. Written whole or not at all. Returns export.json's content."""
    import onnx

    from . import __version__

    _require_onnx()
    out = Path(out)
    if out.is_file():
        raise UserError(f"{out} is a file: the export writes a folder")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists: give another folder, or --overwrite (overwrite=True in Python) to replace it")
    if out.exists():
        check_replaceable_export(out)
    if data is not None:  # a wrong --data is said before the export's seconds, not after
        from .evaluate import labelled_set

        labelled = labelled_set(clf, data)
    text = clf.inputs_.modality == "text"
    model = clf.model_.float().eval()
    graph = (TextGraph(model) if text else ImageGraph(model, clf.preprocess_)).eval()
    names = ["input_ids", "attention_mask"] if text else ["image"]
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=1)
    dims = ({0: batch, 1: length}, {0: batch, 1: length}) if text else ({0: batch},)
    trace = _sample_inputs(clf, 2, seed=0)

    make_dir(out.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise UserError(f"cannot write the export to {out}: {e.strerror or e}") from None
    mask = os.umask(0)
    os.umask(mask)
    tmp.chmod(0o777 & ~mask)  # mkdtemp's folder is private (0700); the export is read as any other folder is
    try:
        t = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")  # the two text inputs share their axes
            torch.onnx.export(
                graph, tuple(torch.from_numpy(a) for a in trace.values()), str(tmp / "model.onnx"),
                input_names=names, output_names=["logits", "probs"], dynamic_shapes=dims,
                dynamo=True, external_data=False, opset_version=opset, verbose=False,
            )
        seconds = time.perf_counter() - t
        try:
            session = _ort_session(tmp / "model.onnx")
        except Exception as e:  # an opset or operator this onnxruntime does not know
            import onnxruntime as ort

            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(f"onnxruntime {ort.__version__} cannot load the export" + (f" at opset {opset}" if opset else "")
                            + f" ({first}); nothing was written" + ("; try a lower --opset" if opset else "")) from None
        probe = _sample_inputs(clf, 3, seed=1)  # another batch size (and other lengths) than traced
        try:
            p_onnx = _ort_run(session, probe)
        except Exception as e:  # the graph kept a traced size: the architecture does not export as it is
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"the ONNX export of {clf.model_.backbone.spec.get('name')} does not run in onnxruntime on another batch size or length than it was traced with ({first}); nothing was written") from None
        check = compare(_torch_run(graph, probe), p_onnx)
        if not check["ok"]:
            raise UserError(f"the ONNX export does not match PyTorch (largest probability difference {check['max_abs_diff_probs']:.2e}, {check['same_class']}/{check['inputs']} same class); nothing was written")
        opsets = {o.domain or "ai.onnx": o.version for o in onnx.load(str(tmp / "model.onnx"), load_external_data=False).opset_import}
        info = {
            "format": "transferkit-onnx/1", "transferkit_version": __version__, "torch_version": torch.__version__,
            "run": run, "modality": clf.inputs_.modality, "classes": clf.class_names_,
            "inputs": {n: {"dtype": str(a.dtype), "shape": ["N"] + (["L"] if text else list(a.shape[1:]))} for n, a in trace.items()},
            "outputs": {"logits": "float32 (N, classes)", "probs": "float32 (N, classes), softmax of logits"},
            "opset": opsets.get("ai.onnx"), "export_seconds": round(seconds, 2), "check": check,
            # `predict --onnx` refuses an export of other weights; an unsaved classifier's weights are
            # hashed as save() writes them, so its export serves the run it is saved to
            "model_sha256": run_model_digest(run) if run else model_digest(clf.model_),
            "onnx_sha256": hashlib.sha256((tmp / "model.onnx").read_bytes()).hexdigest(),  # a half-copied model.onnx is named, not parsed
        }
        if text:
            clf.model_.backbone.tokenizer.save_pretrained(str(tmp / "tokenizer"))
            # the run's truncation, so that the tokenizer as saved gives what the model was checked on
            # (it kept the model's 512: texts longer than the run's max_length scored differently)
            conf = tmp / "tokenizer" / "tokenizer_config.json"
            conf.write_text(json.dumps({**json.loads(conf.read_text()), "model_max_length": clf.inputs_.max_length}, indent=2))
            info["preprocess"] = {"tokenizer": "tokenizer/", "max_length": clf.inputs_.max_length, "padding": "any (attention_mask 0)", "pooling": clf.model_.backbone.pooling}
        else:
            pre = clf.preprocess_
            info["preprocess"] = {
                "resize_size": pre.resize_size, "crop_size": pre.input_size, "interpolation": pre.interpolation,
                "steps": f"open; a JPEG in PIL's draft mode, im.draft('RGB', ({pre.resize_size}, {pre.resize_size})) (a reduced-scale decode of a large JPEG: "
                         f"a full decode moved a probability by up to 0.04 on 8x-upscaled photos); turn as the EXIF orientation says; RGB (16-bit pixels / 257, not clipped); resize the shorter side to {pre.resize_size} ({pre.interpolation}); keep the centre {pre.resize_size}x{pre.resize_size}; uint8 CHW",
                "in_graph": f"centre crop {pre.input_size}, /255, mean {list(pre.mean)}, std {list(pre.std)}",
            }
        if data is not None:
            dc = info["data_check"] = check_on_data(clf, graph, session, labelled)
            if not dc["ok"]:
                raise UserError(f"the ONNX export disagrees with PyTorch on {dc['data']}: {dc['n'] - dc['same_class']} of {dc['n']} classes differ, largest probability difference {dc['max_abs_diff_probs']:.2e}; nothing was written")
        (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info["out"] = str(out)
    return info


EXPORT_FILES = ("export.json", "model.onnx", "tokenizer")


def check_replaceable_export(out: Path) -> None:
    """--overwrite replaces an earlier export, nothing else: it removed whatever folder it was given
    (the current folder, with `--out .`; a run directory, its weights and report with it)."""
    here = Path.cwd().resolve()
    if here == out.resolve() or here.is_relative_to(out.resolve()):
        raise UserError(f"--out {out} is the current folder (or holds it): the export writes a folder of its own; give a new one, such as --out {Path(out) / 'export'}")
    other = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES)
    if other:
        raise UserError(f"--out {out} holds files that are not an export ({', '.join(other[:5])}{' ...' if len(other) > 5 else ''}): --overwrite "
                        f"replaces only an earlier export ({', '.join(EXPORT_FILES)}); give another folder")


def model_digest(model) -> str:
    """The sha256 of the model.safetensors that save() (fit.write_model) would write for `model`."""
    from .fit import model_bytes

    return hashlib.sha256(model_bytes(model)).hexdigest()


def run_model_digest(run_dir: str | Path) -> str | None:
    """The sha256 of a finished run's model.safetensors, as its manifest records it."""
    from .rundir import MANIFEST

    try:
        return json.loads((Path(run_dir) / MANIFEST).read_text())["files"]["model.safetensors"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_export(run_dir: str | Path, folder: str | Path | None = None):
    """An onnxruntime session for RUN_DIR's export, refused unless the export was made from the
    weights the run holds now (a run refitted with --overwrite leaves a stale export behind)."""
    _require_onnx()
    default = folder is None
    folder = Path(run_dir) / "export" if default else Path(folder)
    redo = f"transferkit export {run_dir}" + ("" if default else f" --out {folder}")
    if not default and not folder.exists():
        raise UserError(f"--onnx {folder}: no such folder")
    if folder.is_file():  # model.onnx itself: the folder holds export.json beside it
        raise UserError(f"--onnx takes the export's folder, not a file: --onnx {folder.parent}")
    info_file, model_file = folder / "export.json", folder / "model.onnx"
    if not model_file.is_file() or not info_file.is_file():
        missing = " and ".join(f.name for f in (model_file, info_file) if not f.is_file())
        raise UserError(f"no ONNX export in {folder} (no {missing}): run `{redo}` first")
    try:
        info = json.loads(info_file.read_text())
    except ValueError as e:
        raise UserError(f"{info_file} is damaged ({e}): run `{redo} --overwrite`") from None
    now = run_model_digest(run_dir)
    if info.get("model_sha256") is None or info.get("model_sha256") != now:
        source = info.get("run")
        if source and Path(source).resolve() != Path(run_dir).resolve():  # another run's export: --overwrite would replace it
            raise UserError(f"{folder} is the export of another run, {source}, not of {run_dir}: give {run_dir}'s own export "
                            f"(`transferkit export {run_dir}` writes {Path(run_dir) / 'export'})")
        raise UserError(f"{folder} was not exported from the weights {run_dir} holds now: run `{redo} --overwrite`")
    if info.get("onnx_sha256") and hashlib.sha256(model_file.read_bytes()).hexdigest() != info["onnx_sha256"]:
        raise UserError(f"{model_file} is damaged or was changed (its sha256 is not the one {info_file.name} records): run `{redo} --overwrite`")
    try:
        return _ort_session(model_file)
    except Exception as e:  # an export older than onnx_sha256, damaged
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"onnxruntime cannot load {model_file} ({first}): run `{redo} --overwrite`") from None


def onnx_predict_proba(session, clf, x: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Probabilities of encoded inputs (uint8 images, or ids padded with -1) from an export's session."""
    from .memory import longest_first

    if len(x) == 0:
        return np.zeros((0, len(clf.class_names_)), dtype=np.float32)
    order = longest_first(x)  # texts: batches of similar lengths pad less; the rows come back in their order
    p = np.concatenate([_ort_run(session, part) for part in _batched(_feed(clf, x if order is None else x[order]), batch)])
    return p if order is None else p[order.argsort().numpy()]
