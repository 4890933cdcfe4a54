"""`report.html`: one self-contained page per run (figures embedded as PNG data, no network, no
script): data, resolved config, results against the baseline and the verdict, curves, confusion
matrix, per-class precision and recall with the largest recall gaps, calibration."""

from __future__ import annotations

import base64
import html

import yaml

from .metrics import verdict_kind

CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1040px;color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde1e8;padding-bottom:.2rem}
.sub{color:#5b6474}.verdict{padding:.8rem 1rem;border-radius:6px;margin:1rem 0;font-weight:600}
.helped{background:#e6f4ea;color:#17632b}.neutral{background:#f1f3f6;color:#3a4252}.negative{background:#fde8e8;color:#8c1d1d}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.25rem .7rem;border-bottom:1px solid #eceef2;text-align:right}
th{background:#f6f7f9}td:first-child,th:first-child{text-align:left}.figs{display:flex;flex-wrap:wrap;gap:1rem}
.figs figure{margin:0;flex:1 1 440px}img{max-width:100%;border:1px solid #eceef2;border-radius:4px}
pre{background:#f6f7f9;padding:.8rem;border-radius:6px;overflow:auto;font-size:12.5px;max-height:360px}
.bar{display:inline-block;height:.7rem;background:#4c78a8;border-radius:2px;vertical-align:middle}
"""


def _img(data: bytes, alt: str, wide: bool = False) -> str:
    mime = "image/jpeg" if alt.endswith(".jpg") else "image/png"
    return f'<figure{" style=flex-basis:100%" if wide else ""}><img alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}"><figcaption class="sub">{html.escape(alt)}</figcaption></figure>'


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _groups(gm: dict | None, split: str = "validation") -> str:
    if not gm:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(g)}{' (worst)' if g == gm['worst_group'] else ''}</td><td>{v['n']}</td><td>{_pct(v['accuracy'])}</td><td>{_num(v['macro_f1'])}</td></tr>"
        for g, v in gm["per_group"].items()
    )
    from .metrics import worst_group_text

    said = worst_group_text(gm)
    return (f"<h2>Per group ({split} split)</h2><p class=sub>{html.escape(said[0].upper() + said[1:])}"
            f"{' (a bias the source model may carry)' if gm.get('worst_group') is not None else ''}.</p><table><tr><th>group</th><th>n</th><th>accuracy</th><th>macro-F1</th></tr>{rows}</table>")


def _verdict_div(v: str | None) -> str:
    if not v:
        return ""
    return f'<div class="verdict {verdict_kind(v)}">{html.escape(v)}</div>'


def _temperature(ts: dict | None) -> str:
    if not ts:
        return ""
    if "skipped" in ts:
        return f" Probabilities as trained: temperature scaling skipped ({html.escape(ts['skipped'])})."
    b, a = ts["val_before"], ts["val_after"]
    return (
        f" Probabilities: temperature scaling, T = {ts['temperature']:.3f} fitted on the validation split (ECE {100 * b['ece']:.1f}% &rarr; "
        f"{100 * a['ece']:.1f}%, NLL {b['nll']:.3f} &rarr; {a['nll']:.3f}"
        + (f"; on the held-out test split ECE {100 * ts['test_before']['ece']:.1f}% &rarr; {100 * ts['test_after']['ece']:.1f}%" if "test_after" in ts else "; the test split, when there is one, is the honest check")
        + ")."
    )


def _mistakes(m: dict, png: bytes | None) -> str:
    mk = m.get("mistakes")
    if mk is None:
        return ""
    head = f"<h2>Mistakes</h2><p class=sub>{mk['count']} of {m['n_val']} validation examples wrong"
    if not mk["count"]:
        return head + ".</p>"
    head += "; all of them, most confidently wrong first, in <code>mistakes.csv</code>.</p>"
    if png is not None:
        return head + f"<div class=figs>{_img(png, 'mistakes.jpg', wide=True)}</div>"
    rows = "".join(
        f"<tr><td>{_weighed(r)}</td><td>{html.escape(r['true'])}</td><td>{html.escape(r['predicted'])}</td><td>{r['p_predicted']:.2f}</td></tr>"
        for r in mk["most_confident"]
    )
    legend = LEGEND if any("evidence" in r for r in mk["most_confident"]) else ""
    return head + legend + f"<table><tr><th>example</th><th>true</th><th>said</th><th>p</th></tr>{rows}</table>"


LEGEND = (
    "<p class=sub>Words in <span style='background:rgba(214,39,40,.45)'>red</span> pushed the model toward the class it said "
    "(leaving the word out lowers that probability), in <span style='background:rgba(31,119,180,.45)'>blue</span> away from it; "
    "hover a word for the change.</p>"
)


def _timing(timing: dict, unit: str) -> str:
    """metrics.json's `timing` as a table a person reads (it was its JSON)."""
    labels = {"features_s": "backbone features, computed once (s)", "probe_s": "probe phase (s)", "finetune_s": "fine-tuning phase (s)",
              "train_seconds": "training steps in all (s)", "train_images": f"training {unit} through the backbone (all epochs)",
              "local_images": f"training {unit} through the backbone in this process", "features_cached": "backbone features read from the cache"}
    if not timing.get("train_images") and timing.get("features_s") is not None:  # a probe on cached features: none go through the backbone's training
        timing = {**timing, "train_images": f"0 (the probe trains on the {unit}' cached features)"}
    rows = "".join(f"<tr><td>{html.escape(labels.get(k, k))}</td><td>{v:.1f}</td></tr>" if isinstance(v, float) else
                   f"<tr><td>{html.escape(labels.get(k, k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in timing.items() if not (k == "local_images" and v == timing.get("train_images")))
    return f"<table>{rows}</table>" if rows else ""


def explain_page(title: str, rows: list[dict]) -> str:
    """`predict --explain` for texts: each text with its words shaded toward the class said."""
    e = html.escape
    body = "".join(f"<tr><td>{e(str(r.get('file', '')))}</td><td>{r.get('row', '')}</td><td>{_weighed(r)}</td><td>{e(r['predicted'])}</td>"
                   f"<td>{r['p_predicted']:.2f}</td></tr>" for r in rows)
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{e(title)}</h1>{LEGEND}<table><tr><th>file</th><th>row</th><th>text</th><th>said</th><th>p</th></tr>{body}</table></body></html>\n"
    )


def _weighed(r: dict) -> str:
    """A text with each word shaded by its occlusion evidence toward the class said."""
    ev = r.get("evidence")
    if not ev:
        return html.escape(r["source"])
    top = max(max((abs(d) for _, d in ev), default=0.0), 0.1)  # a text where no word moves p by 0.1 stays pale
    spans = []
    for w, d in ev:
        rgb = "214,39,40" if d > 0 else "31,119,180"
        spans.append(f"<span title='{d:+.3f}' style='background:rgba({rgb},{0.75 * abs(d) / top:.2f})'>{html.escape(w)}</span>")
    return " ".join(spans)


def render(*, title: str, metrics: dict, config: dict, data: dict, figures: dict[str, bytes], kept: str | None = None) -> str:
    """The run's report.html. `kept`: the terminal's line on the epoch whose weights were kept (and
    why its score in the curves can differ from the table's), said under the figures."""
    e = html.escape
    m, b = metrics, metrics["baseline"]
    verdict = m["verdict"]
    kind = verdict_kind(verdict)
    rows = [
        ("transferkit", m["accuracy"], m["macro_f1"], m.get("auroc"), m.get("calibration", {}).get("ece")),
        (b["name"], b["accuracy"], b["macro_f1"], b.get("auroc"), None),
    ]
    for key, label in (("scratch", "from scratch"), ("base", "without the source stage")):
        if key in m:
            sc = m[key]
            rows.append((f"{label} ({sc['model']})", sc["accuracy"], sc["macro_f1"], sc.get("auroc"), None))
    if "test" in m:
        te = m["test"]
        rows.append((f"transferkit on the test split ({m.get('n_test', '?')} examples)", te["accuracy"], te["macro_f1"], te.get("auroc"), te.get("calibration", {}).get("ece")))
        for key, label in (("baseline", b["name"]), ("scratch", "from scratch"), ("base", "without the source stage")):  # the test verdicts' other side
            if key in te:
                rows.append((f"{label} on the test split", te[key]["accuracy"], te[key]["macro_f1"], te[key].get("auroc"), None))
    res = "".join(f"<tr><td>{e(n)}</td><td>{_pct(a)}</td><td>{_num(f)}</td><td>{_num(u)}</td><td>{_pct(c)}</td></tr>" for n, a, f, u, c in rows)
    from .metrics import fmt

    per = m["per_class"]
    held = {c: v for c, v in per.items() if v["recall"] is not None}  # classes with examples here (n/a: 0/0)
    best_recall = max((v["recall"] for v in held.values()), default=0.0)
    pc = "".join(
        f"<tr><td>{e(c)}</td><td>{fmt(v['precision'])}</td><td>{fmt(v['recall'])} <span class=bar style='width:{60 * (v['recall'] or 0):.0f}px'></span></td>"
        f"<td>{fmt(v['f1'])}</td><td>{v['support']}</td></tr>"
        for c, v in per.items()
    )
    gaps = sorted(held.items(), key=lambda kv: kv[1]["recall"])[:5]
    gap_rows = "".join(f"<tr><td>{e(c)}</td><td>{v['recall']:.3f}</td><td>{100 * (best_recall - v['recall']):.1f}</td></tr>" for c, v in gaps)
    test = "test" in data  # --test-fraction's split had no column here
    counts = "".join(
        f"<tr><td>{e(c)}</td><td>{data.get('train', {}).get(c, 0)}</td><td>{data.get('val', {}).get(c, 0)}</td>"
        + (f"<td>{data['test'].get(c, 0)}</td>" if test else "") + "</tr>" for c in data.get("classes", [])[:50]
    )
    choice = m.get("model_choice")
    chosen = f"<p><b>Model:</b> chosen by --model auto: {e(choice['reason'])}.</p>" if choice else ""
    figs = "".join(_img(png, name, wide=name.startswith("curves")) for name, png in figures.items() if name != "mistakes.jpg")
    boot = m.get("transfer_vs_baseline_validation") or m.get("transfer_vs_baseline", {})  # this section's split: validation
    notes = "".join(f"<li>{e(n)}</li>" for n in m.get("data_notes", []))
    timing = m.get("timing", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{e(title)}</title><style>{CSS}</style></head><body>
<h1>{e(title)}</h1>
<div class="sub">{e(str(config.get('model', {}).get('name')))} &middot; strategy {e(str(config.get('strategy', {}).get('name')))} &middot;
{m['n_train']} training / {m['n_val']} validation{f" / {m['n_test']} test" if m.get('n_test') else ""} examples ({e(str(m.get('val_split')))}) &middot; {m['wall_s']:.1f} s on {e(str(m.get('device')))}</div>
{chosen}<div class="verdict {kind}">{e(verdict)}</div>{f"<p><b>But:</b> {e(m['verdict_caveat'])}.</p>" if m.get('verdict_caveat') else ""}
{"".join(_verdict_div(m.get(f'verdict_{k}')) + (f"<p><b>But:</b> {e(m[f'verdict_{k}_caveat'])}.</p>" if m.get(f'verdict_{k}_caveat') else "") for k in ('scratch', 'base'))}{"".join(f"<p><b>Warning:</b> {e(n)}.</p>" for n in m.get('one_class_notes', []))}{f"<p><b>In short:</b> {e(m['in_short'])}.</p>" if m.get('in_short') else ""}
<h2>Results (validation split{"; the rows that say so: the held-out test split" if "test" in m else ""})</h2>
<table><tr><th></th><th>accuracy</th><th>macro-F1</th><th>AUROC</th><th>ECE</th></tr>{res}</table>
<p class="sub">{"On the validation split, t" if "test" in m else "T"}{"he model" if "nothing was transferred" in verdict else "ransfer"} minus baseline: {100 * boot.get('diff', 0):+.1f} points{" of macro-F1" if boot.get("metric") == "macro_f1" else ""}, paired bootstrap 95% CI
[{100 * boot.get('ci_low', 0):+.1f}, {100 * boot.get('ci_high', 0):+.1f}]. Selection: {e(str(m.get('selection')))}.{_temperature(m.get('temperature_scaling'))}</p>
{_groups(m.get('groups'))}{_groups(m.get('test', {}).get('groups'), "test")}
<h2>Figures</h2>{f'<p class="sub">{e(kept[0].upper() + kept[1:])}.</p>' if kept else ""}<div class="figs">{figs}</div>
{_mistakes(m, figures.get("mistakes.jpg"))}
<h2>Per class (validation split)</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{pc}</table>
<h3>Largest recall gaps (to the best class, points)</h3>
<table><tr><th>class</th><th>recall</th><th>gap</th></tr>{gap_rows}</table>
<h2>Data</h2>
<p class="sub">{e(str(data.get('source')))}</p>
<table><tr><th>class</th><th>train</th><th>val</th>{"<th>test</th>" if test else ""}</tr>{counts}</table>
{f'<ul>{notes}</ul>' if notes else ''}
<h2>Timing</h2>{_timing(timing, "texts" if m.get("modality") == "text" else "images")}
<h2>Resolved configuration</h2><pre>{e(yaml.safe_dump(config, sort_keys=False))}</pre>
</body></html>
"""
