"""Clock, pizza or uninterpreted: the [Z23] decision rules over ``signatures``, with evidence.

Rules (SCIENCE.md section 4), applied in order with the ``Thresholds`` reported beside the label:

1. accuracy over the full grid < ``min_accuracy`` (0.99) -> uninterpreted, reason "not generalised";
2. circularity < ``min_circularity`` -> uninterpreted, reason "non-circular". By default the gate is
   0.9 on the spectral circularity (``grokscope.circles``), which principal components of nearly
   equal variance cannot lower; ``STRICT`` is the paper's: 0.99 on [Z23]'s per-component circularity;
3. GS >= 0.98 and DI_correct <= 0.4 -> pizza; GS <= 0.9 and DI_correct >= 0.6 -> clock;
4. anything else -> uninterpreted, reason "mixed".

A second, independent vote compares the clock and pizza logit templates circle by circle (the
centred fractions of variance explained, weighted by each circle's share of the embedding variance).
It never decides the label; it sets the confidence: 1 when it agrees clearly with the GS / DI label,
0.5 when it is neutral or missing, towards 0 when it disagrees. Every circle also gets its own label
(clock, pizza, accompanying, mixed or unexplained): one model can run different algorithms on
different circles.

>>> from grokscope.tasks import Task
>>> from grokscope.constructions import exact_clock_model
>>> task = Task(p=23)
>>> classify(exact_clock_model(task, [3, 7]), task).label
'clock'
"""

from dataclasses import asdict, dataclass, replace

from grokscope.errors import GrokscopeError
from grokscope.models import HookedTransformer
from grokscope.circles import Circle
from grokscope.algorithm_signatures import Signatures, signatures
from grokscope.tasks import Task

LABELS = ("clock", "pizza", "uninterpreted")
REASONS = (None, "not generalised", "non-circular", "mixed")
CIRCLE_LABELS = ("clock", "pizza", "accompanying", "mixed", "unexplained")
CIRCULARITY_MEASURES = ("spectral", "paper")


@dataclass(frozen=True)
class Thresholds:
    """Every number the decision uses (see docs/classifier.md for the reasoning behind each).

    Attributes:
        min_accuracy: accuracy over the full grid below which a model is "not generalised".
        min_circularity: the circularity gate; 0.99 (``STRICT``) is the paper's phase-diagram setting.
        circularity_measure: what the gate reads: "spectral" (``Signatures.spectral_circularity``) or
            "paper" (``Signatures.circularity``, [Z23]'s per-component measure).
        pizza_min_gs, pizza_max_di: pizza when GS >= pizza_min_gs and DI_correct <= pizza_max_di.
        clock_max_gs, clock_min_di: clock when GS <= clock_max_gs and DI_correct >= clock_min_di.
        template_margin: a centred-FVE difference (pizza - clock) smaller than this is neutral.
        template_scale: the difference at which the template vote counts fully for the confidence
            (its strength grows linearly from 0 at ``template_margin`` to 1 here).
        min_template_fve: a circle whose best centred template FVE is below this is "unexplained".
    """

    min_accuracy: float = 0.99
    min_circularity: float = 0.9
    circularity_measure: str = "spectral"
    pizza_min_gs: float = 0.98
    pizza_max_di: float = 0.4
    clock_max_gs: float = 0.9
    clock_min_di: float = 0.6
    template_margin: float = 0.05
    template_scale: float = 0.2
    min_template_fve: float = 0.5

    def __post_init__(self):
        if self.circularity_measure not in CIRCULARITY_MEASURES:
            raise GrokscopeError(f"circularity_measure = {self.circularity_measure!r}",
                                 expected=f"one of {CIRCULARITY_MEASURES}", where="Thresholds")

    def to_dict(self) -> dict:
        """JSON-safe dict of every threshold."""
        return asdict(self)

    def gated_circularity(self, sig: Signatures) -> float:
        """The circularity value the gate compares with ``min_circularity``."""
        return sig.spectral_circularity if self.circularity_measure == "spectral" else sig.circularity


DEFAULT = Thresholds()
STRICT = Thresholds(min_circularity=0.99, circularity_measure="paper")
"""The [Z23] phase-diagram setting: only clean circles count, by the paper's own measure."""


@dataclass(frozen=True)
class Classification:
    """A label with its reason, confidence, the signatures behind it and the thresholds used.

    Attributes:
        label: "clock", "pizza" or "uninterpreted".
        reason: None for clock / pizza, else "not generalised", "non-circular" or "mixed".
        confidence: in [0, 1], lowered when the template vote disagrees with the GS / DI vote.
        signatures: every measured value (``grokscope.algorithm_signatures.Signatures``).
        thresholds: the ``Thresholds`` applied.
        template_vote: "clock", "pizza", "neutral" or None (no circle to compare templates on).
        template_margin: the weighted mean of (pizza - clock) centred template FVE over the circles.
        circle_labels: (circle index, frequency k, label) for every circle.
        evidence: human-readable lines, one per rule or vote.
    """

    label: str
    reason: str | None
    confidence: float
    signatures: Signatures
    thresholds: Thresholds
    template_vote: str | None
    template_margin: float | None
    circle_labels: tuple[tuple[int, int, str], ...]
    evidence: tuple[str, ...]

    def __repr__(self) -> str:
        s = self.signatures
        why = f", {self.reason}" if self.reason else ""
        return (f"Classification({self.label}{why}, confidence {self.confidence:.2f}, "
                f"GS {s.gradient_symmetricity:.3f}, DI {s.di_correct:.3f}, "
                f"{self.thresholds.circularity_measure} circularity {self.thresholds.gated_circularity(s):.3f}, "
                f"accuracy {s.accuracy:.3f})")

    def to_dict(self) -> dict:
        """JSON-safe dict with the summary.json ``classification`` keys, circles and evidence."""
        s = self.signatures
        labels = {index: label for index, _, label in self.circle_labels}
        circles = [{**_circle_dict(c), "label": labels.get(c.index)} for c in s.circles]
        return {"label": self.label, "reason": self.reason, "confidence": self.confidence,
                "accuracy": s.accuracy, "gradient_symmetricity": s.gradient_symmetricity,
                "distance_irrelevance": s.di_correct, "distance_irrelevance_runnerup": s.di_runnerup,
                "basis": s.basis, "group_accuracy": s.group_accuracy,
                "zero_operand_accuracy": s.zero_operand_accuracy,
                "circularity": s.circularity, "circularity_b": s.circularity_b,
                "spectral_circularity": s.spectral_circularity,
                "template_fve": s.template_fve, "template_fve_centred": s.template_fve_centred,
                "template_vote": self.template_vote, "template_margin": self.template_margin,
                "circles": circles, "gs_samples": s.n_samples, "gs_seed": s.seed,
                "thresholds": self.thresholds.to_dict(), "evidence": list(self.evidence)}


def _circle_dict(c: Circle) -> dict:
    return {"index": c.index, "components": list(c.components), "freq": c.freq, "delta": c.delta,
            "variance": c.variance, "roundness": c.roundness, "purity": c.purity, "isolated_on": c.isolated_on,
            "is_circle": c.is_circle, "doubles": c.doubles,
            "accompanying": c.is_accompanying, "template_fve": c.template_fve,
            "template_fve_centred": c.template_fve_centred, "phase": c.phase}


def circle_label(circle: Circle, thresholds: Thresholds = DEFAULT) -> str | None:
    """The algorithm one circle runs, from its centred template FVE (None for a broken pair)."""
    fve = circle.template_fve_centred
    if not circle.is_circle or not fve:
        return None
    if circle.is_accompanying:
        return "accompanying"
    if max(fve["clock"], fve["pizza"]) < thresholds.min_template_fve:
        return "unexplained"
    difference = fve["pizza"] - fve["clock"]
    if abs(difference) <= thresholds.template_margin:
        return "mixed"
    return "pizza" if difference > 0 else "clock"


def template_vote(sig: Signatures, thresholds: Thresholds = DEFAULT) -> tuple[str | None, float | None]:
    """("pizza" | "clock" | "neutral" | None, margin): variance-weighted mean of pizza - clock centred
    FVE over the circles labelled clock, pizza or mixed."""
    voting = [c for c in sig.circles if circle_label(c, thresholds) in ("clock", "pizza", "mixed")]
    total = sum(c.variance for c in voting)
    if not voting or total <= 0:
        return None, None
    margin = sum(c.variance * (c.template_fve_centred["pizza"] - c.template_fve_centred["clock"])
                 for c in voting) / total
    if abs(margin) <= thresholds.template_margin:
        return "neutral", margin
    return ("pizza" if margin > 0 else "clock"), margin


def classify_signatures(sig: Signatures, thresholds: Thresholds | None = None) -> Classification:
    """Apply the rules of the module docstring to measured signatures (no model needed)."""
    t = DEFAULT if thresholds is None else thresholds
    if not isinstance(t, Thresholds):
        raise GrokscopeError(f"thresholds of type {type(t).__name__}", expected="a Thresholds",
                             where="classify")
    gs, di = sig.gradient_symmetricity, sig.di_correct
    vote, margin = template_vote(sig, t)
    zero = (f"; with a zero operand {sig.zero_operand_accuracy:.4f}, on the nonzero grid {sig.group_accuracy:.4f}"
            if sig.zero_operand_accuracy is not None else "")
    evidence = [f"accuracy over the full grid {sig.accuracy:.4f} (generalised at >= {t.min_accuracy}){zero}",
                f"circularity {sig.circularity:.4f}, spectral {sig.spectral_circularity:.4f} "
                f"(gate {t.min_circularity} on {t.circularity_measure})"
                + (f"; b tokens {sig.circularity_b:.4f}" if sig.circularity_b is not None else ""),
                f"gradient symmetricity {gs:.4f} (pizza >= {t.pizza_min_gs}, clock <= {t.clock_max_gs}; "
                f"{sig.n_samples} samples, seed {sig.seed})",
                f"distance irrelevance {di:.4f} (pizza <= {t.pizza_max_di}, clock >= {t.clock_min_di}); "
                f"runner-up logit {sig.di_runnerup:.4f}",
                f"measured in {sig.basis or 'Z_' + str(sig.p)} (group coordinates of the task)"]
    circle_labels, totals = [], {}
    for c in sig.circles:
        label = circle_label(c, t)
        if label is None:
            continue
        circle_labels.append((c.index, c.freq, label))
        count, variance = totals.get(label, (0, 0.0))
        totals[label] = (count + 1, variance + c.variance)
        fve = c.template_fve_centred
        extra = f", accompanying {fve['accompanying']:.1%}" if "accompanying" in fve else ""
        evidence.append(f"circle {c.index + 1} (k = {c.freq}, delta = {c.delta if c.delta is not None else '-'}, {c.variance:.1%} of the "
                        f"variance): clock {fve['clock']:.1%}, pizza {fve['pizza']:.1%}{extra} -> {label}")
    if totals:
        evidence.append("circles: " + ", ".join(f"{count} {label} ({variance:.1%} of the variance)"
                                                for label, (count, variance) in totals.items()))

    if sig.accuracy < t.min_accuracy:
        label, reason = "uninterpreted", "not generalised"
    elif t.gated_circularity(sig) < t.min_circularity:
        label, reason = "uninterpreted", "non-circular"
    elif gs >= t.pizza_min_gs and di <= t.pizza_max_di:
        label, reason = "pizza", None
    elif gs <= t.clock_max_gs and di >= t.clock_min_di:
        label, reason = "clock", None
    else:
        label, reason = "uninterpreted", "mixed"

    strength = 0.0  # signed strength of the template vote: 0 when neutral or missing, +-1 at full scale
    if margin is not None and abs(margin) > t.template_margin:
        excess = (abs(margin) - t.template_margin) / max(t.template_scale - t.template_margin, 1e-12)
        strength = min(1.0, excess) * (1.0 if margin > 0 else -1.0)
    if reason in ("not generalised", "non-circular"):
        confidence = 1.0
    elif label in ("clock", "pizza"):
        confidence = 0.5 + 0.5 * (strength if label == "pizza" else -strength)
    else:
        confidence = 1.0 - 0.5 * abs(strength)
    if vote is None:
        evidence.append("template vote: no circle to compare the templates on")
    else:
        agreement = "" if label not in ("clock", "pizza") else \
            (" (agrees)" if vote == label else "" if vote == "neutral" else " (DISAGREES)")
        evidence.append(f"template vote: {vote}{agreement}, pizza - clock = {margin:+.1%} "
                        "(centred FVE, weighted over circles)")
    evidence.append(f"-> {label}" + (f" ({reason})" if reason else "") + f", confidence {confidence:.2f}")
    return Classification(label=label, reason=reason, confidence=float(confidence), signatures=sig,
                          thresholds=t, template_vote=vote, template_margin=margin,
                          circle_labels=tuple(circle_labels), evidence=tuple(evidence))


def classify(model: HookedTransformer, task: Task, *, thresholds: Thresholds | None = None,
             n_samples: int = 100, seed: int = 42, templates: bool = True) -> Classification:
    """Measure ``signatures(model, task)`` and classify them (see the module docstring).

    ``templates=False`` skips the logit templates (about 3x faster for a six-circle model): the label
    is the same, the confidence 0.5 (no second vote). Measured in the task's group (add, sub, mul,
    div; ``algorithm_signatures``); raises GrokscopeError for operations without one.
    """
    sig = signatures(model, task, n_samples=n_samples, seed=seed, templates=templates)
    return classify_signatures(sig, thresholds)


def with_thresholds(classification: Classification, **changes: float) -> Classification:
    """Re-classify the same signatures with some thresholds changed, e.g. ``min_circularity=0.99``."""
    return classify_signatures(classification.signatures, replace(classification.thresholds, **changes))
