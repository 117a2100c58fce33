"""The pipeline over a run's checkpoints: key frequencies, progress measures per checkpoint, phases.

``analyze(run)`` streams ``run.iter_models()``: one model in memory at a time, and nothing kept per
checkpoint but its table row (floats). Key frequencies are fixed from the final readable checkpoint
by default, as in [N23]; ``recompute_key_freqs=True`` chooses them again at every checkpoint.

Seams for tools built on top:
- ``measure_checkpoint(model, task, key_freqs, train_indices)`` is the whole per-checkpoint unit of
  work (one forward pass); parallel workers can map it over checkpoint indices and hand their rows
  to ``assemble_table`` and ``find_phases``.
- the final checkpoint is loaded once, before streaming; ``classify`` (a callable of (model, task))
  runs on it there, and its result is stored in ``AnalysisResult.classification``; ``inspect_final``
  (name -> callable of (model, task)) does the same for anything else, into ``final_extras``.

>>> from grokscope.tasks import Task
>>> from grokscope.constructions import exact_clock_model
>>> from grokscope.formats.base import Run
>>> from grokscope.models import parameter_state_dict
>>> task = Task(p=23)
>>> model = exact_clock_model(task, [4, 9])
>>> run = Run(task, model.cfg, [0], lambda i: parameter_state_dict(model), "clock", "memory")
>>> result = analyze(run, classify=None)
>>> result.key_freqs.freqs, result.final_row["full_acc"]
([4, 9], 1.0)
"""

import html
import importlib
import math
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from grokscope.errors import GrokscopeError
from grokscope.formats.base import skip_entry
from grokscope.fourier import FourierBasis, KeyFrequencies, as_freq_list, key_frequencies, task_basis
from grokscope.limits import check_checkpoint_count
from grokscope.measures import progress_measures
from grokscope.models import HookedTransformer, final_logits
from grokscope.monitor import Detection, detect_phases, train_only_measures
from grokscope.pathways import pathway_measures
from grokscope.phases import Phases, find_phases, unavailable
from grokscope.progress import progress_bar
from grokscope.tasks import Task
from grokscope.views import model_views

SUMMARY_COLUMNS = ("step", "train_loss", "test_loss", "train_acc", "test_acc", "full_acc", "restricted_loss",
                   "excluded_loss", "sum_sq_weights", "gini_W_E", "gini_W_L")
"""Columns shown by the HTML view (where present)."""


@dataclass
class AnalysisResult:
    """Everything ``analyze`` found, as plain fields.

    Attributes:
        run_info: source, format, task (dict), alpha, n_checkpoints (readable ones analysed).
        task: the Task.
        key_freqs: the key frequencies every row used (from the final checkpoint unless given), or
            the final checkpoint's own when recomputed per checkpoint.
        table: column name -> list, one entry per analysed checkpoint; ``step`` first.
        phases: phase boundaries from ``find_phases(table)``; with one checkpoint, from the run's
            training curves where it has them (``phases_without_history``), else not available.
        skipped: ``{"path", "error"}`` per unreadable checkpoint.
        notes: what could not be computed, and why.
        classification: what ``classify`` returned for the final checkpoint (None without it).
        key_freqs_by_step: with ``recompute_key_freqs``, step -> that checkpoint's frequencies.
        final_extras: what each ``inspect_final`` callable returned for the final checkpoint.
        train_only: the train-only detector replayed over the trainonly_* columns
            (``monitor.detect_phases``); the only phases available when the split is unknown.
            None for a single checkpoint (the detector needs a sequence).
    """

    run_info: dict[str, Any]
    task: Task
    key_freqs: KeyFrequencies
    table: dict[str, list]
    phases: Phases
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    classification: Any = None
    key_freqs_by_step: dict[int, list[int]] | None = None
    final_extras: dict[str, Any] = field(default_factory=dict)
    train_only: Detection | None = None

    @property
    def steps(self) -> list[int]:
        """The analysed checkpoint steps."""
        return list(self.table.get("step", []))

    @property
    def final_row(self) -> dict[str, Any]:
        """The last checkpoint's row (empty when nothing was analysed)."""
        if not self.steps:
            return {}
        return {name: values[-1] for name, values in self.table.items()}

    def figures(self) -> list:
        """The standard (title, plotly figure) pairs (``plots.standard_figures``): curves over checkpoints
        with the phases shaded, and the final checkpoint's Fourier norms, neuron clusters, circles and
        correct-logit map (where ``analyze`` kept its views)."""
        from grokscope.plots import standard_figures

        view = self.final_extras.get("views") or {}
        return standard_figures(self.table if len(self.steps) > 1 else None, self.phases,
                                embedding_norms=view.get("embedding_norms"), key_freqs=self.key_freqs.freqs,
                                neuron_freq=view.get("neuron_freq"), frac_explained=view.get("frac_explained"),
                                circles=view.get("circles"), logit_grid=view.get("logit_grid"))

    def to_pandas(self):
        """The table as a pandas DataFrame (pandas is optional: ImportError names it)."""
        try:
            import pandas
        except ImportError as error:
            raise ImportError("AnalysisResult.to_pandas needs pandas: pip install pandas") from error
        return pandas.DataFrame(self.table)

    def _headline(self) -> list[tuple[str, str]]:
        info, final = self.run_info, self.final_row
        steps = self.steps
        span = f"{len(steps)} checkpoints, steps {steps[0]}..{steps[-1]}" if steps else "no checkpoints"
        grok = ("not available" if not getattr(self.phases, "available", True)
                else f"grokked at step {self.phases.grokking_step}" if self.phases.grokked
                else "did not grok" if steps else "-")
        accuracy = final.get("full_acc", math.nan)
        return [("run", f"{info.get('format')} p={self.task.p} op={self.task.op} ({info.get('source')})"),
                ("checkpoints", span + (f", {len(self.skipped)} skipped" if self.skipped else "")),
                ("key frequencies", f"{self.key_freqs.freqs} (rule {self.key_freqs.rule}"
                 + (f", {self.key_freqs.basis})" if self.key_freqs.basis else ")")),
                ("phases", grok), ("final accuracy", f"{accuracy:.4f}")]

    def __repr__(self) -> str:
        parts = [f"{name}: {value}" for name, value in self._headline()]
        return "AnalysisResult(" + "; ".join(parts) + ")"

    def _repr_html_(self) -> str:
        head = "".join(f"<tr><th style='text-align:left'>{html.escape(n)}</th><td>{html.escape(v)}</td></tr>"
                       for n, v in self._headline())
        columns = [c for c in SUMMARY_COLUMNS if c in self.table]
        n = len(self.steps)
        shown = list(range(n)) if n <= 6 else [0, 1, 2, n - 3, n - 2, n - 1]
        rows = []
        for position, i in enumerate(shown):
            if n > 6 and position == 3:
                rows.append(f"<tr><td colspan='{len(columns)}'>... {n - 6} more ...</td></tr>")
            rows.append("<tr>" + "".join(f"<td>{_format(self.table[c][i])}</td>" for c in columns) + "</tr>")
        header = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
        return (f"<div><table>{head}</table><table>{header}{''.join(rows)}</table></div>")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def measure_checkpoint(model: HookedTransformer, task: Task, key_freqs: KeyFrequencies | list[int] | None,
                       train_indices: Int[Tensor, "n_train"] | None = None, *, rule: str = "A",
                       basis: FourierBasis | None = None, pathways: bool = False
                       ) -> tuple[dict[str, float], list[str], KeyFrequencies | None]:
    """One checkpoint's table row, its notes, and (when ``key_freqs`` is None) its own key frequencies.

    One forward pass feeds everything; with ``key_freqs=None`` the same pass also yields the MLP
    activations from which ``rule`` (default "A") picks this checkpoint's key frequencies. The row
    also holds the train-only measures (``monitor.train_only_measures``: their own key frequencies
    from the weights, losses on the train rows, every row when the split is unknown), and with
    ``pathways`` the experimental ``pathways.pathway_measures`` (one more forward pass, train rows).
    """
    basis = _basis_or_none(task) if basis is None else basis
    own = None
    with torch.no_grad():
        if key_freqs is None:
            logits, post = final_logits(model, task.tokens(), return_post=True)
            own = _key_frequencies_or_none(model, task, rule, post, basis)
            key_freqs = own
        else:
            logits = final_logits(model, task.tokens())
        measures = progress_measures(model, task, key_freqs, train_indices, logits=logits, basis=basis)
        rows = None if train_indices is None else torch.as_tensor(train_indices).long()
        # The train-only measures live in Z_p; mul and div analyse in Z_{p-1}, so they get no basis here.
        train_only = train_only_measures(model, task, rows, basis=basis if task.op in ("add", "sub") else None,
                                         train_logits=logits if rows is None else logits[rows])
    notes = measures.notes + [note for note in train_only.notes if "split unknown" not in note]  # analyze says it once
    row = {**measures.as_row(), **train_only.as_row()}
    if pathways:
        row.update(pathway_measures(model, task, rows))
    return row, notes, own


def _basis_or_none(task: Task) -> FourierBasis | None:
    """The task's Fourier basis, None for operations without a group (their Fourier measures are NaN)."""
    return task_basis(task) if task.group is not None else None


def _key_frequencies_or_none(model, task, rule, post, basis) -> KeyFrequencies:
    try:
        return key_frequencies(model, task, rule, post=post, basis=basis)
    except GrokscopeError as error:
        return KeyFrequencies(freqs=[], rule=rule, threshold=math.nan, detail={"error": str(error)})


def assemble_table(rows: list[tuple[int, dict[str, float]]]) -> dict[str, list]:
    """Column-wise table from (step, row) pairs sorted by step; a column missing from a row is NaN."""
    rows = sorted(rows, key=lambda item: item[0])
    names: list[str] = []
    for _, row in rows:
        names.extend(name for name in row if name not in names)
    table: dict[str, list] = {"step": [int(step) for step, _ in rows]}
    for name in names:
        table[name] = [float(row.get(name, math.nan)) for _, row in rows]
    return table


def _final_model(run) -> tuple[HookedTransformer | None, int | None, list[dict[str, str]]]:
    """The last readable checkpoint (index counted from the start) and the errors of those after it,
    without touching run.skipped."""
    errors = []
    for i in reversed(range(len(run.steps))):
        try:
            return run.model(i), i, errors
        except GrokscopeError as error:
            errors.append(skip_entry(run.checkpoint_path(i), error))
    return None, None, errors


def _auto_classifier() -> Callable | None:
    try:
        return importlib.import_module("grokscope.classifier").classify
    except (ImportError, AttributeError):
        return None


def analyze(run, *, key_freqs: KeyFrequencies | list[int] | None = None, recompute_key_freqs: bool = False,
            rule: str = "A", progress: bool = False, classify: Callable | str | None = "auto",
            inspect_final: dict[str, Callable] | None = None, views: bool = True,
            workers: int = 1, pathways: bool = False) -> AnalysisResult:
    """Progress measures at every checkpoint of ``run``, key frequencies, phases and notes.

    Args:
        run: a ``grokscope.formats.base.Run`` (any layout; a single model is a one-checkpoint run).
        key_freqs: use these for every checkpoint instead of choosing them.
        recompute_key_freqs: choose key frequencies again at every checkpoint (per-k columns then
            vary; missing ones are NaN). Default: fixed from the final checkpoint ([N23]).
        rule: the key-frequency rule ("A", "B" or "C", see ``fourier.key_frequencies``).
        progress: draw a progress bar on stderr (only on a terminal).
        classify: a callable (model, task) -> anything, run on the final checkpoint; "auto" uses
            ``grokscope.classifier.classify`` when that module is present; None skips it.
        inspect_final: name -> callable (model, task) run on the final checkpoint while it is loaded;
            results in ``AnalysisResult.final_extras`` (GrokscopeError becomes a note).
        views: also keep the final checkpoint's ``views.model_views`` (Fourier norms, neuron
            clusters, circles, correct-logit map) in ``final_extras["views"]`` for ``figures()``.
        workers: processes measuring checkpoints in parallel (each holds one model at a time; rows
            come back in checkpoint order). 1 measures in this process.
        pathways: also compute the experimental pathway measures per checkpoint (``grokscope.pathways``:
            columns pathway_distance, label_consistency, active_fraction), drawn by the train-only figure.

    Raises:
        GrokscopeError: no checkpoint of the run is readable (an empty analysis means nothing), or
            its table would not fit in memory (``limits.check_checkpoint_count``).
    """
    if not isinstance(workers, int) or workers < 1:
        raise GrokscopeError(f"workers = {workers!r}", expected="a whole number >= 1", where="analyze")
    if key_freqs is not None and recompute_key_freqs:
        raise GrokscopeError("both key_freqs and recompute_key_freqs=True", where="analyze",
                             expected="fixed key frequencies or per-checkpoint ones, not both")
    check_checkpoint_count(len(run.steps), where=str(run.source))
    task, notes, extras = run.task, [], {}
    basis = _basis_or_none(task)
    order = task.group.N if task.group is not None else task.p
    final_model, final_index, errors = _final_model(run)
    classification = None
    if final_model is None:
        raise _nothing_readable(run, errors[::-1])
    if isinstance(key_freqs, KeyFrequencies):
        as_freq_list(key_freqs, order)
        chosen = key_freqs
    elif key_freqs is not None:
        chosen = KeyFrequencies(freqs=as_freq_list(key_freqs, order), rule="given", threshold=math.nan,
                                basis=basis.name if basis is not None else "")
    else:
        chosen = _key_frequencies_or_none(final_model, task, rule, None, basis)
        if "error" in chosen.detail:
            notes.append(f"key frequencies: {chosen.detail['error']}")
        if not chosen.freqs:
            notes.append(f"rule {rule} found no key frequency at the final checkpoint (step "
                         f"{run.steps[final_index]}); restricted / excluded losses use K = {{}}")
    classifier = _auto_classifier() if classify == "auto" else classify
    if classifier is not None:
        try:
            classification = classifier(final_model, task)
        except (GrokscopeError, torch.linalg.LinAlgError) as error:  # e.g. weights so large the SVD fails
            notes.append(f"classification: {error}")
    inspectors = dict(inspect_final or {})
    if views:
        circle_labels = {index: label for index, _, label in getattr(classification, "circle_labels", ())}
        inspectors.setdefault("views", lambda model, task: model_views(
            model, task, key_freqs=chosen.freqs, circle_labels=circle_labels))
    for name, inspect in inspectors.items():
        try:
            extras[name] = inspect(final_model, task)
        except (GrokscopeError, torch.linalg.LinAlgError) as error:
            notes.append(f"{name}: {error}")
    del final_model

    rows, by_step, seen_notes = [], {} if recompute_key_freqs else None, set()
    fixed = None if recompute_key_freqs else chosen
    with progress_bar(len(run.steps), desc=f"analyze p={task.p}", enabled=progress, unit="ckpt") as bar:
        for step, row, row_notes, own in _measured_checkpoints(run, fixed, rule, basis, workers, pathways):
            rows.append((step, row))
            if own is not None:
                by_step[int(step)] = list(own.freqs)
            for note in row_notes:
                if note not in seen_notes:
                    seen_notes.add(note)
                    notes.append(note)
            bar.set_postfix({"step": step, "test_loss": row["test_loss"], "full_acc": row["full_acc"]}, refresh=False)
            bar.update(1)
    table = assemble_table(rows)
    if recompute_key_freqs and by_step:
        chosen = KeyFrequencies(freqs=by_step[table["step"][-1]], rule=rule, threshold=chosen.threshold,
                                detail={"recomputed_per_checkpoint": True})
    if run.train_indices is None:
        notes.append("train/test split unknown: train/test columns are NaN, excluded loss uses all rows; "
                     "the trainonly_* columns count every grid row as a train row")
    if not table["step"]:  # the final checkpoint was readable once but not when streamed
        raise _nothing_readable(run, run.skipped)
    phases = find_phases(table) if len(table["step"]) > 1 else phases_without_history(run, table["step"][-1])
    notes.extend(note for note in phases.notes if note.startswith("phases "))
    # One checkpoint is a snapshot: the detector needs a sequence to see r rise and fall.
    detection = detect_phases(table, task.p)[0] if "trainonly_restricted_loss" in table and len(table["step"]) > 1 else None
    skipped = _unique(run.skipped)
    info = {"source": run.source, "format": run.format, "task": task.to_dict(), "n_ctx": task.n_ctx,
            "alpha": float(run.alpha), "n_checkpoints": len(table["step"]),
            "n_checkpoints_listed": len(run.steps), "split_known": run.train_indices is not None}
    return AnalysisResult(run_info=info, task=task, key_freqs=chosen, table=table, phases=phases,
                          skipped=skipped, notes=notes, classification=classification,
                          key_freqs_by_step=by_step, final_extras=extras, train_only=detection)


def _nothing_readable(run, errors: list[dict[str, str]]) -> GrokscopeError:
    if not run.steps:
        return GrokscopeError("no checkpoints", expected="at least one readable checkpoint", where=str(run.source))
    first = errors[0] if errors else {"path": run.checkpoint_path(0), "error": "unreadable"}
    if len(run.steps) == 1:  # one model: its own error says it all
        return GrokscopeError(first["error"], where=first["path"])
    return GrokscopeError(f"no readable checkpoint among {len(run.steps)} (first: {first['path']}: {first['error']})",
                          expected="at least one readable checkpoint", where=str(run.source))


def phases_without_history(run, step: int) -> Phases:
    """Phases of a run with one analysed checkpoint (at ``step``): from the training curves stored with it
    (``run.log``, cut at ``step``) when they have two rows or more, else not available.

    Curve phases say so in ``method`` and have ``source = "training curves"``; boundaries that need
    measures of checkpoints (the excluded-loss rise) are None with a note.
    """
    log = run.log or {}
    keep = [i for i, s in enumerate(log.get("step", [])) if s <= step]
    curves = {name: [values[i] for i in keep] for name, values in log.items()} if len(keep) > 1 else None
    if curves is None or len(curves) < 2:
        return unavailable("a single checkpoint and no training curves")
    phases = find_phases(curves)
    columns = ", ".join(name for name in curves if name != "step")
    prefix = f"from the training curves stored with the run ({columns}; no checkpoints): "
    phases.method = {name: prefix + rule for name, rule in phases.method.items()}
    phases.source = "training curves"
    phases.notes.insert(0, f"phases from the training curves ({len(keep)} rows of {columns}), not from checkpoints")
    return phases


def _measured_checkpoints(run, key_freqs, rule, basis, workers, pathways=False):
    """Yield (step, row, notes, own key frequencies) per readable checkpoint, in order.

    Unreadable checkpoints are recorded in ``run.skipped``. With ``workers > 1`` forked processes
    each load and measure one checkpoint at a time; only rows travel back.
    """
    if workers == 1 or len(run.steps) < 2:
        for step, model in run.iter_models():
            yield (step, *measure_checkpoint(model, run.task, key_freqs, run.train_indices, rule=rule, basis=basis,
                                             pathways=pathways))
        return
    global _WORKER_JOB
    _WORKER_JOB = (run, key_freqs, rule, basis, pathways)
    context = multiprocessing.get_context("fork")
    try:
        with context.Pool(min(workers, len(run.steps)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for step, measured, skipped in pool.imap(_measure_in_worker, range(len(run.steps))):
                if skipped is not None:
                    run.skipped.append(skipped)
                    continue
                yield (step, *measured)
    finally:
        _WORKER_JOB = None


_WORKER_JOB = None
"""(run, key_freqs, rule, basis, pathways) inherited by forked workers."""


def _measure_in_worker(index: int):
    run, key_freqs, rule, basis, pathways = _WORKER_JOB
    try:
        model = run.model(index)
    except GrokscopeError as error:
        return run.steps[index], None, skip_entry(run.checkpoint_path(index), error)
    own_row = measure_checkpoint(model, run.task, key_freqs, run.train_indices, rule=rule, basis=basis,
                                 pathways=pathways)
    return run.steps[index], own_row, None


def _unique(entries: list[dict[str, str]]) -> list[dict[str, str]]:
    seen, unique = set(), []
    for entry in entries:
        key = (entry.get("path"), entry.get("error"))
        if key not in seen:
            seen.add(key)
            unique.append(dict(entry))
    return unique
