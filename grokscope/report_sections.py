"""The HTML pieces of report.html: the verdict that leads the page and the evidence sections below it.

Each function takes part of summary.json (DESIGN.md) and returns escaped HTML. A field the summary
does not have, or holds as null, is left out, or named once with the reason it is unavailable; no
cell shows a bare "n/a". Wide tables sit in a horizontally scrolling box, so no table can widen the
page.

>>> print(decision_rows({"accuracy": 1.0, "gradient_symmetricity": 0.99, "thresholds": {"min_accuracy": 0.99,
...                      "pizza_min_gs": 0.98, "clock_max_gs": 0.9}})[1])
('gradient symmetricity (GS)', '0.99', 'pizza >= 0.98, clock <= 0.9', 'pizza side')
"""

import html as _html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["decision_rows", "verdict", "phase_strip", "classification_evidence", "circles_table",
           "thresholds_table", "key_frequencies", "final_checkpoint", "phases_detail", "models_table",
           "generic", "fmt"]


def esc(value: Any) -> str:
    return _html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """Plain text for one value: 4 significant digits; '' for None and NaN (callers say why)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e7 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value) if value else "none"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {fmt(v)}" for k, v in value.items() if fmt(v) != "")
    return str(value)


def _known(value: Any) -> bool:
    return fmt(value) != ""


def muted(text: str) -> str:
    return f'<p class="muted">{esc(text)}</p>'


def scroll(table_html: str) -> str:
    """A table in a box that scrolls sideways instead of widening the page."""
    return f'<div class="scroll">{table_html}</div>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """An escaped table; cells are values (formatted) or ``Html`` (inserted as is)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{cell_html(c)}</td>' if i in numeric else f"<td>{cell_html(c)}</td>"
        for i, c in enumerate(row)) + "</tr>" for row in rows)
    return scroll(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    """Name / value rows, those with an unknown value left out."""
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{cell_html(v)}</td></tr>" for k, v in rows
                    if isinstance(v, Html) or _known(v) or isinstance(v, (Mapping, list, tuple)))
    return scroll(f'<table class="kv">{cells}</table>') if cells else ""


class Html(str):
    """Text that is already escaped HTML."""


def cell_html(value: Any) -> str:
    return value if isinstance(value, Html) else generic(value)


def generic(value: Any) -> str:
    """Escaped HTML for any JSON-like value: mappings as tables (null entries left out), lists of
    mappings as tables with a column per key, short lists of numbers inline, other lists as bullets."""
    if isinstance(value, Mapping):
        return kv_table(list(value.items())) or '<span class="muted">none</span>'
    if isinstance(value, (list, tuple)):
        if not value:
            return '<span class="muted">none</span>'
        if all(isinstance(v, Mapping) for v in value):
            keys = list(dict.fromkeys(k for v in value for k in v))
            return table(keys, [[v.get(k) for k in keys] for v in value])
        if len(value) <= 12 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return esc(fmt(list(value)))
        return "<ul>" + "".join(f"<li>{generic(v)}</li>" for v in value) + "</ul>"
    return esc(fmt(value))


def badge(label: Any, big: bool = False) -> str:
    kind = label if label in ("pizza", "clock") else "other"
    size = " label-big" if big else ""
    return f'<span class="label label-{kind}{size}">{esc(fmt(label) or "unknown")}</span>'


# ---------------------------------------------------------------- the verdict

_MEANING = {"pizza": "the model adds the embeddings of a and b and reads the answer off their midpoint, "
                     "so its logits depend on a - b: logit(c) ~ |cos(w(a-b)/2)| cos(w(a+b-c)) [Z23]",
            "clock": "the model composes the rotations of a and b on each circle: logit(c) ~ cos(w(a+b-c)), "
                     "independent of a - b [Z23]"}
_REASONS = {"not generalised": "the model does not solve the task over the full grid, so there is no "
                               "algorithm to name",
            "non-circular": "the embedding is not made of clean circles, so the clock and pizza stories "
                            "do not apply",
            "mixed": "the gradient symmetricity and distance irrelevance fall in neither the pizza nor the "
                     "clock region"}


def _side(value: float, pizza: tuple[str, float | None], clock: tuple[str, float | None]) -> str:
    def holds(rule: tuple[str, float | None]) -> bool:
        op, bound = rule
        return bound is not None and (value >= bound if op == ">=" else value <= bound)
    return "pizza side" if holds(pizza) else "clock side" if holds(clock) else "between"


def decision_rows(c: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """The numbers the classifier decided on, in its order: ``(measure, value, rule, outcome)``.

    The rules are docs/classifier.md's: accuracy over the full grid, the circularity gate, GS and DI
    against their pizza and clock bounds, then the logit-template vote.
    """
    th = c.get("thresholds") or {}
    rows = []
    accuracy = c.get("accuracy")
    if _known(accuracy):
        bound = th.get("min_accuracy")
        rule = f">= {fmt(bound)} to count as generalised" if bound is not None else ""
        outcome = "" if bound is None else "generalised" if accuracy >= bound else "not generalised"
        rows.append(("accuracy over the full grid", fmt(accuracy), rule, outcome))
    for key, name, op_pizza, k_pizza, op_clock, k_clock in (
            ("gradient_symmetricity", "gradient symmetricity (GS)", ">=", "pizza_min_gs", "<=", "clock_max_gs"),
            ("distance_irrelevance", "distance irrelevance (DI)", "<=", "pizza_max_di", ">=", "clock_min_di")):
        value = c.get(key)
        if not _known(value):
            continue
        pizza, clock = (op_pizza, th.get(k_pizza)), (op_clock, th.get(k_clock))
        rule = ", ".join(f"{side} {op} {fmt(bound)}" for side, (op, bound) in (("pizza", pizza), ("clock", clock))
                         if bound is not None)
        rows.append((name, fmt(value), rule, _side(value, pizza, clock) if rule else ""))
    measure = th.get("circularity_measure", "spectral")
    key = "spectral_circularity" if measure == "spectral" else "circularity"
    value, gate = c.get(key), th.get("min_circularity")
    if _known(value):
        name = "spectral circularity" if key == "spectral_circularity" else "circularity ([Z23])"
        rule = f">= {fmt(gate)}: the embedding is made of circles" if gate is not None else ""
        outcome = "" if gate is None else "circular" if value >= gate else "non-circular"
        rows.insert(1 if rows and rows[0][0].startswith("accuracy") else 0, (name, fmt(value), rule, outcome))
    vote, margin = c.get("template_vote"), c.get("template_margin")
    if vote is not None or _known(margin):
        value = f"pizza - clock = {margin:+.1%}" if _known(margin) else ""
        bound, scale = th.get("template_margin"), th.get("template_scale")
        rule = "second vote, sets the confidence"
        if _known(bound):
            rule += f": neutral within +-{bound:.0%}" + (f", full weight from +-{scale:.0%}" if _known(scale) else "")
        rows.append(("logit templates (centred FVE)", value, rule, f"{vote} vote" if vote else ""))
    elif "template_vote" in c:
        rows.append(("logit templates", "", "second vote", "no circle to compare templates on"))
    return rows


def verdict(c: Mapping[str, Any]) -> str:
    """The label, its confidence, what it means, and the table of the numbers that decided it."""
    if not c:
        return muted("No classification: the analysis did not classify this model.")
    label, reason, confidence = c.get("label"), c.get("reason"), c.get("confidence")
    head = badge(label, big=True)
    if _known(confidence):
        head += f' <span class="confidence">confidence {confidence:.2f}</span>'
    if label in _MEANING and not reason:
        meaning = _MEANING[label]
    elif reason:
        meaning = f"{reason}: " + _REASONS.get(reason, "see the evidence below")
    else:
        meaning = ""
    out = [f'<p class="verdict">{head}</p>']
    if meaning:
        out.append(f'<p class="meaning">{esc(meaning[0].upper() + meaning[1:])}.</p>')
    rows = decision_rows(c)
    if rows:
        out.append("<h3>The numbers that decided it</h3>")
        out.append(table(["measure", "value", "rule", "outcome"],
                         [[Html(esc(m)), Html(esc(v)), Html(esc(r)), Html(esc(o))] for m, v, r, o in rows],
                         numeric=(1,)))
    if _known(confidence) and confidence < 1:
        out.append(muted("The logit-template vote sets the confidence: 1 when it clearly agrees with the "
                         "label from GS and DI, 0.5 when it is neutral or missing, towards 0 when it disagrees."
                         if label in ("clock", "pizza") else
                         "The confidence falls as the logit-template vote leans clearly to clock or pizza."))
    return "".join(out)


_STRIP = [("memorization_step", "memorisation"), ("grokking_step", "grokking"), ("delay_ratio", "delay"),
          ("circuit_formation_start", "circuit formation"), ("cleanup_end_step", "cleanup ends")]


def phase_strip(ph: Mapping[str, Any], n_checkpoints: int | None) -> str:
    """The phases in one line: the steps found, then those not found; or why there are none."""
    if ph.get("available") is False:
        why = str((ph.get("method") or {}).get("phases", "not available")).removeprefix("not available: ")
        return muted(f"Phases: not available ({why}).")
    found, missing = [], []
    for key, name in _STRIP:
        value = ph.get(key)
        if key == "circuit_formation_start":
            end = ph.get("circuit_formation_end")
            if _known(value) and _known(end):
                found.append((name, f"steps {fmt(value)} to {fmt(end)}"))
            elif key in ph or "circuit_formation_end" in ph:
                missing.append(name)
        elif key == "delay_ratio":
            if _known(value):
                found.append((name, f"{value:.3g}x (grokking / memorisation)"))
        elif _known(value):
            found.append((name, f"step {fmt(value)}"))
        elif key in ph:
            missing.append(name)
    if not found:
        why = ("one checkpoint has no training history" if n_checkpoints is not None and n_checkpoints <= 1
               else "none was detected; the Phases section below says how each is looked for")
        return muted(f"Phases: not available ({why}).")
    items = "".join(f"<li><strong>{esc(n)}</strong> {esc(v)}</li>" for n, v in found)
    out = f'<ul class="strip">{items}</ul>'
    if missing:
        out += muted("Not detected: " + ", ".join(missing) + ".")
    return out


# ---------------------------------------------------------------- the evidence

_SIGNATURES = [
    ("gradient_symmetricity", "gradient symmetricity (GS)",
     "mean cosine between the gradients of a logit with respect to the embeddings of a and of b, over "
     "sampled (a, b, c); pizza near 1, clock low"),
    ("distance_irrelevance", "distance irrelevance (DI, correct logit)",
     "how little the correct logit depends on a - b: mean over a - b of its spread over a + b, over its "
     "total spread; clock near 1, pizza low"),
    ("distance_irrelevance_runnerup", "distance irrelevance (runner-up logit)",
     "the same for the largest wrong logit, as in the released result tables"),
    ("circularity", "circularity ([Z23])",
     "mean over the first 4 principal components of the embedding of the largest share of a "
     "component's energy at one frequency"),
    ("circularity_b", "circularity of the b tokens", "the same for the rows of b's own tokens"),
    ("spectral_circularity", "spectral circularity",
     "share of the first 4 principal variances carried by the 2 strongest frequency planes"),
    ("accuracy", "accuracy over the full grid", "all p^2 inputs"),
]


def classification_evidence(c: Mapping[str, Any]) -> str:
    """Every signature with what it measures, the template FVE, the circles, the evidence lines and
    the thresholds; other fields the summary holds follow as tables."""
    if not c:
        return muted("No classification.")
    rows = [[Html(esc(name)), c[key], Html(esc(meaning))] for key, name, meaning in _SIGNATURES
            if _known(c.get(key))]
    samples, seed = c.get("gs_samples"), c.get("gs_seed")
    if rows and _known(samples):
        rows[0][2] = Html(rows[0][2] + esc(f" ({samples} samples, seed {seed})"))
    for key, name, what in (
            ("template_fve", "logit template FVE", "share of the logit variance each template explains, "
                                                   "weighted over the circles, as [Z23] computes it (2 rho - 1)"),
            ("template_fve_centred", "logit template FVE, centred",
             "the same after removing each class's and each input's mean logit; the classifier compares these")):
        fve = c.get(key)
        if isinstance(fve, Mapping) and any(_known(v) for v in fve.values()):
            value = ", ".join(f"{kind} {v:.1%}" for kind, v in fve.items() if _known(v))
            rows.append([Html(esc(name)), Html(esc(value)), Html(esc(what))])
        elif key == "template_fve" and key in c:
            rows.append([Html(esc(name)), Html(""), Html("not computed: no circle to compare the templates on")])
    out = [table(["signature", "value", "what it measures"], rows, numeric=(1,))] if rows else []
    if c.get("circles"):
        out.append(f"<h3>Circles ({len(c['circles'])})</h3>" + circles_table(c["circles"]))
    if c.get("evidence"):
        out.append("<h3>How the classifier read it</h3>" + generic(list(c["evidence"])))
    if c.get("thresholds"):
        out.append("<h3>Thresholds</h3>" + thresholds_table(c["thresholds"]))
    used = {key for key, _, _ in _SIGNATURES} | {"label", "reason", "confidence", "template_fve",
                                                  "template_fve_centred", "template_vote", "template_margin",
                                                  "circles", "gs_samples", "gs_seed", "thresholds", "evidence"}
    for key, value in c.items():
        if key not in used and (_known(value) or isinstance(value, (Mapping, list, tuple)) and value):
            out.append(f"<h3>{esc(key.replace('_', ' '))}</h3>" + generic(value))
    return "".join(out)


_THRESHOLDS = {
    "min_accuracy": "accuracy over the full grid below which a model is not generalised",
    "min_circularity": "the circularity gate: below it the embedding is non-circular",
    "circularity_measure": "which circularity the gate reads (spectral, or [Z23]'s per-component one)",
    "pizza_min_gs": "pizza needs GS at least this", "pizza_max_di": "pizza needs DI at most this",
    "clock_max_gs": "clock needs GS at most this", "clock_min_di": "clock needs DI at least this",
    "template_margin": "a pizza - clock template difference smaller than this is a neutral vote",
    "template_scale": "the difference at which the template vote counts fully for the confidence",
    "min_template_fve": "a circle whose best centred template FVE is below this is unexplained"}


def thresholds_table(th: Mapping[str, Any]) -> str:
    """Every threshold the classifier used, with what it decides."""
    return table(["threshold", "value", "what it decides"],
                 [[Html(esc(k)), v, Html(esc(_THRESHOLDS.get(k, "")))] for k, v in th.items() if _known(v)],
                 numeric=(1,))


def circles_table(circles: Sequence[Mapping[str, Any]]) -> str:
    """One row per circle of the embedding, with the columns a reader compares."""
    kinds = list(dict.fromkeys(k for circle in circles
                               for k in (circle.get("template_fve_centred") or circle.get("template_fve") or {})))
    rows = []
    for i, circle in enumerate(circles):
        fve = circle.get("template_fve_centred") or circle.get("template_fve") or {}
        notes = []
        if circle.get("is_circle") is False:
            notes.append("not a clean circle")
        if circle.get("doubles") is not None:
            notes.append(f"doubles circle {int(circle['doubles']) + 1}")
        if circle.get("isolated_on") not in (None, "components"):
            notes.append(f"isolated on {circle['isolated_on']}")
        components = circle.get("components")
        rows.append([int(circle.get("index", i)) + 1, circle.get("freq", circle.get("k")), circle.get("delta"),
                     Html(esc(", ".join(str(x) for x in components))) if components else Html(""),
                     Html(esc(f"{circle['variance']:.1%}")) if _known(circle.get("variance")) else Html(""),
                     circle.get("roundness"), circle.get("purity"),
                     *[Html(esc(f"{fve[k]:.1%}")) if _known(fve.get(k)) else Html("") for k in kinds],
                     Html(badge(circle["label"]) if circle.get("label") else ""), Html(esc("; ".join(notes)))])
    header = ["#", "k", "delta", "components", "variance", "roundness", "purity",
              *[f"{k} FVE" for k in kinds], "label", "notes"]
    caption = ("k: frequency; delta: the token step between neighbours on the circle (k = 1/delta mod p); "
               "variance: share of the embedding variance; roundness: minor / major axis; purity: share of "
               "the plane's energy at k; FVE: centred template fractions of variance explained.")
    return table(header, rows, numeric=(0, 1, 2, 4, 5, 6, *range(7, 7 + len(kinds)))) + muted(caption)


_RULES = {"A": "rule A: each neuron's strongest frequency, kept when enough neurons are explained above "
               "the threshold ([N23])",
          "B": "rule B: frequencies whose W_L Fourier norm exceeds the threshold times the largest",
          "C": "rule C: frequencies whose W_E Fourier norm exceeds the threshold times the largest",
          "given": "given by the caller"}


def key_frequencies(kf: Mapping[str, Any]) -> str:
    kf = dict(kf or {})
    freqs, rule, threshold = kf.pop("freqs", None), kf.pop("rule", None), kf.pop("threshold", None)
    rows = [("key frequencies", freqs if freqs else Html('<span class="muted">none found</span>')),
            ("rule", Html(esc(_RULES.get(rule, rule or "")))), ("threshold", threshold), *kf.items()]
    return kv_table(rows)


_FINAL = [("step", "step"), ("accuracy", "accuracy over the full grid"), ("loss", "loss over the full grid"),
          ("train_loss", "train loss"), ("test_loss", "test loss"), ("train_accuracy", "train accuracy"),
          ("test_accuracy", "test accuracy"), ("restricted_loss", "restricted loss (key frequencies only)"),
          ("excluded_loss", "excluded loss (key frequencies removed)")]
_SPLIT = {"train_loss", "test_loss", "train_accuracy", "test_accuracy"}


def final_checkpoint(final: Mapping[str, Any]) -> str:
    names = dict(_FINAL)
    rows = [(names.get(k, k.replace("_", " ")), v) for k, v in final.items() if _known(v)]
    absent = [k for k, v in final.items() if not _known(v)]
    out = kv_table(rows)
    split = [names[k] for k in absent if k in _SPLIT]
    other = [names.get(k, k.replace("_", " ")) for k in absent if k not in _SPLIT]
    if split:
        out += muted("Not available: " + ", ".join(split) + " (the train/test split is not stored with "
                     "this model; the measures use the full grid).")
    if other:
        out += muted("Not computed: " + ", ".join(other) + " (see the notes).")
    return out


_PHASE_EVENTS = [("memorization_step", "memorisation (train accuracy reaches 99%)"),
                 ("circuit_formation_start", "circuit formation starts"),
                 ("circuit_formation_end", "circuit formation ends, cleanup starts"),
                 ("grokking_step", "grokking (test accuracy reaches 99%)"),
                 ("cleanup_end_step", "cleanup ends"),
                 ("delay_ratio", "delay ratio (grokking / memorisation)")]


def phases_detail(ph: Mapping[str, Any]) -> str:
    """Every phase boundary with how it was detected, 'not detected' where it was not."""
    if not ph:
        return muted("No phases (no table of measures over training).")
    if ph.get("available") is False:
        why = str((ph.get("method") or {}).get("phases", "not available")).removeprefix("not available: ")
        return muted(f"Phases not available: {why}.")
    method = ph.get("method") or {}
    method = dict(method) if isinstance(method, Mapping) else {"method": method}
    rows = []
    for key, name in _PHASE_EVENTS:
        how = method.pop(key, None) or method.pop(key.removesuffix("_step"), None)
        if key in ph or how is not None:
            step = ph.get(key)
            shown = Html(esc(fmt(step))) if _known(step) else Html('<span class="muted nowrap">not detected</span>')
            rows.append([Html(esc(name)), shown, Html(esc(how or ""))])
    out = table(["event", "step", "how it is detected"], rows)
    if method:
        out += "<h3>Method</h3>" + generic(method)
    extra = {k: v for k, v in ph.items() if k not in dict(_PHASE_EVENTS) and k != "method"}
    return out + (kv_table([(k.replace("_", " "), v) for k, v in extra.items()]) if extra else "")


def models_table(models: Sequence[Mapping[str, Any]]) -> str:
    """One row per model of a folder: name, size, accuracy, label and the signatures behind it."""
    rows = []
    for m in models:
        c, final = m.get("classification") or {}, m.get("final") or {}
        path = (m.get("source") or {}).get("path", m.get("name"))
        name = Html(f'<span title="{esc(path)}">{esc(Path(str(path)).name)}</span>') if path else Html("")
        label = Html(badge(c.get("label")) + (f' <span class="muted">{esc(c["reason"])}</span>'
                                              if c.get("reason") else "")) if c else Html("")
        rows.append([name, label, (m.get("task") or {}).get("p"), m.get("attention_rate"), final.get("accuracy"),
                     c.get("gradient_symmetricity"), c.get("distance_irrelevance"),
                     c.get("distance_irrelevance_runnerup"), c.get("circularity"), c.get("spectral_circularity"),
                     c.get("confidence")])
    return table(["model", "label", "p", "alpha", "accuracy", "GS", "DI", "DI runner-up", "circularity",
                  "spectral circularity", "confidence"], rows, numeric=tuple(range(2, 11)))
