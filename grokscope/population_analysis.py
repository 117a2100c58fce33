"""Analyse a sweep (or any folder of runs) member by member: population.csv, summary.json, report.html.

A sweep folder (written by ``grokscope sweep``) holds ``sweep.json`` (format "grokscope-sweep": the
spec, the swept ``axes`` and every member's TrainConfig), ``index.csv`` (one row per member: id,
settings, status, grokking step) and one native run per member in ``runs/<id>/``. Any other folder
of runs or models is read as a population too: its members are its sub-folders and checkpoint files,
and its axes the settings that vary between them.

Members are streamed: each is loaded, its final checkpoint measured and classified [Z23], and only
its table row is kept, so memory stays flat in the number of members; ``workers`` processes do
members in parallel (one torch thread each). One checkpoint per member is measured (no per-checkpoint
measures): the final one, or with ``step=N`` the one at step N, so one sweep answers what its
members were after N epochs (full-batch training with a constant learning rate: checkpoint N of a
longer run is the run that stopped at N). The memorisation and grokking steps come from log.csv
(first logged step, up to the measured one, with train / test accuracy >= 99%, as
``grokscope.training.summarize``).
"""

import csv
import io
import json
import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokscope import __version__
from grokscope import population as pop
from grokscope.checkpoints import atomic_write, json_safe, write_json
from grokscope.errors import GrokscopeError
# The sweep folder's layout and its sweep.json reader are the trainer's (grokscope.sweep_runner).
from grokscope.sweep_runner import INDEX_CSV as INDEX_FILE
from grokscope.sweep_runner import RUNS_DIR as RUNS_FOLDER
from grokscope.sweep_runner import SWEEP_JSON as SWEEP_FILE
from grokscope.sweep_runner import read_sweep

POPULATION_FILE, SUMMARY_FILE, REPORT_FILE = "population.csv", "summary.json", "report.html"
OUTPUT_FOLDER = "grokscope"

SETTINGS = ("p", "op", "frac", "alpha", "d_model", "n_layers", "n_heads", "d_mlp", "act_fn", "weight_decay", "lr",
            "epochs", "grokfast", "seed", "split_seed")
"""Settings every row carries (after the swept axes), from the member's TrainConfig where it has one."""

MEASURES = ("status", "final_step", "memorization_step", "grokking_step", "delay_ratio", "delay_steps",
            "train_loss", "test_loss", "train_acc", "test_acc", "accuracy", "loss", "restricted_loss",
            "excluded_loss", "key_frequencies", "gradient_symmetricity", "distance_irrelevance",
            "distance_irrelevance_runnerup", "circularity", "spectral_circularity", "circularity_b",
            "template_fve_clock", "template_fve_pizza", "template_vote", "label", "reason", "confidence",
            "label_strict", "reason_strict", *(f"circles_{label}" for label in pop.CIRCLE_LABELS), "error")
"""The measured columns of population.csv, in order (docs/populations.md explains each)."""


@dataclass(frozen=True)
class Member:
    """One member to analyse: its id, its path relative to the root, settings and status."""

    id: str
    path: str
    settings: dict[str, Any] = field(default_factory=dict)
    status: str | None = None


# ----- reading the folder --------------------------------------------------------------------------
def is_sweep(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a sweep folder (it holds sweep.json)."""
    return (Path(path) / SWEEP_FILE).is_file()


def read_index(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """index.csv of a sweep folder by member id (empty when the file is absent)."""
    file = Path(path) / INDEX_FILE
    if not file.is_file():
        return {}
    with open(file, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "id" not in reader.fieldnames:
            raise GrokscopeError(f"columns {reader.fieldnames}", expected="an 'id' column (and status)",
                                 where=str(file))
        return {row["id"]: row for row in reader}


def sweep_members(path: str | os.PathLike) -> tuple[list[Member], list[str], dict[str, Any]]:
    """(members, axes, spec) of a sweep folder, members in sweep.json order (``sweep_runner.read_sweep``
    reads and checks the file)."""
    plan = read_sweep(path)
    index = read_index(path)
    members = [Member(id=member_id, path=f"{RUNS_FOLDER}/{member_id}", settings=config.to_dict(),
                      status=index.get(member_id, {}).get("status") or None)
               for member_id, config in plan.members.items()]
    return members, list(plan.axes), plan.spec


def folder_members(path: str | os.PathLike) -> list[Member]:
    """The members of a plain folder: each sub-folder or checkpoint file that holds a run or model."""
    from grokscope.formats import _members

    root = Path(path)
    return [Member(id=Path(entry).name, path=os.path.relpath(entry, root)) for entry in _members(str(root))]


# ----- one member ----------------------------------------------------------------------------------
def _settings_of(run, given: dict[str, Any]) -> dict[str, Any]:
    config = (run.config or {}).get("train_config") if run is not None else None
    settings = dict(config) if isinstance(config, dict) else {}
    settings.update(given)
    if run is not None:
        cfg = run.cfg
        derived = {"p": run.task.p, "op": run.task.op, "alpha": float(run.alpha), "d_model": cfg.d_model,
                   "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_mlp": cfg.d_mlp, "act_fn": cfg.act_fn}
        raw = run.config or {}
        for name in ("frac", "weight_decay", "lr", "seed"):
            if name in raw and isinstance(raw[name], (int, float)) and not isinstance(raw[name], bool):
                derived[name] = raw[name]
        for name, value in derived.items():
            if settings.get(name) is None:
                settings[name] = value
    return settings


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _checkpoint_at(run, step: int):
    """The model at checkpoint ``step`` of ``run`` and its index; GrokscopeError naming the steps there are."""
    if step not in run.steps:
        shown = ", ".join(str(s) for s in run.steps[-8:]) or "none"
        raise GrokscopeError(f"no checkpoint at step {step} (latest steps: {shown})",
                             expected=f"a checkpoint at step {step}: a step of the run's schedule it has reached",
                             where=run.source)
    index = run.steps.index(step)
    return run.model(index), index


def _log_until(log: dict[str, list], step: int) -> dict[str, list]:
    """The rows of a log.csv with step <= ``step``."""
    keep = [i for i, s in enumerate(log["step"]) if s <= step]
    return {column: [values[i] for i in keep] for column, values in log.items()}


def measure_member(root: str | os.PathLike, member: Member, thresholds=None, step: int | None = None
                   ) -> dict[str, Any]:
    """The population.csv row of one member: settings, steps from log.csv, final measures, signatures.

    With ``step`` the checkpoint at that step is measured instead of the final one, and the
    memorisation and grokking steps are read from the log up to it. A member that cannot be read or
    measured (or has no checkpoint at ``step``) gets a row with ``error`` set (and no measures).
    """
    from grokscope.analysis import _final_model, measure_checkpoint
    from grokscope.classifier import STRICT, classify_signatures, with_thresholds
    from grokscope.algorithm_signatures import signatures
    from grokscope.formats import load_run
    from grokscope.training import first_step_at

    row: dict[str, Any] = {"id": member.id, "path": member.path, "status": member.status}
    run = None
    try:
        run = load_run(Path(root) / member.path)
        row.update({k: v for k, v in _settings_of(run, member.settings).items()})
        if step is None:
            model, index, _errors = _final_model(run)
            if model is None:
                raise GrokscopeError("no readable checkpoint", expected="at least one", where=run.source)
        else:
            model, index = _checkpoint_at(run, step)
        row["final_step"] = run.steps[index]
        log = run.log if step is None or not run.log else _log_until(run.log, step)
        if log and log.get("step"):
            memorised, grokked = first_step_at(log, "train_acc"), first_step_at(log, "test_acc")
            row.update(memorization_step=memorised, grokking_step=grokked,
                       delay_ratio=grokked / memorised if memorised and grokked is not None else None,
                       delay_steps=grokked - memorised if memorised is not None and grokked is not None else None)
        measures, _, own = measure_checkpoint(model, run.task, None, run.train_indices)
        row.update(train_loss=measures["train_loss"], test_loss=measures["test_loss"],
                   train_acc=measures["train_acc"], test_acc=measures["test_acc"], accuracy=measures["full_acc"],
                   loss=measures["full_loss"], restricted_loss=measures["restricted_loss"],
                   excluded_loss=measures["excluded_loss"],
                   key_frequencies=" ".join(str(k) for k in (own.freqs if own is not None else [])))
        sig = signatures(model, run.task)
        result = classify_signatures(sig, thresholds)
        strict = with_thresholds(result, **STRICT.to_dict())
        fve = sig.template_fve_centred or {}
        row.update(gradient_symmetricity=sig.gradient_symmetricity, distance_irrelevance=sig.di_correct,
                   distance_irrelevance_runnerup=sig.di_runnerup, circularity=sig.circularity,
                   spectral_circularity=sig.spectral_circularity, circularity_b=sig.circularity_b,
                   template_fve_clock=fve.get("clock"), template_fve_pizza=fve.get("pizza"),
                   template_vote=result.template_vote, label=result.label, reason=result.reason,
                   confidence=result.confidence, label_strict=strict.label, reason_strict=strict.reason)
        for label in pop.CIRCLE_LABELS:
            row[f"circles_{label}"] = sum(1 for _, _, circle in result.circle_labels if circle == label)
    except GrokscopeError as error:
        row["error"] = str(error)
        if run is None:
            row.update(member.settings)
    return {name: (None if isinstance(v, float) and math.isnan(v) else v) for name, v in row.items()}


# ----- streaming -----------------------------------------------------------------------------------
_JOB: tuple | None = None
"""(root, thresholds, step) inherited by forked workers."""


def _measure_in_worker(member: Member) -> dict[str, Any]:
    root, thresholds, step = _JOB
    return measure_member(root, member, thresholds, step)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def stream_rows(root: str | os.PathLike, members: Sequence[Member], *, workers: int = 1,
                thresholds=None, step: int | None = None) -> Iterator[dict[str, Any]]:
    """Yield one row per member, in member order; with ``workers > 1`` forked processes measure them
    (each holds one model at a time and is replaced after a while, so no process grows)."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise GrokscopeError(f"workers = {workers!r}", expected="a whole number >= 1", where="analyze")
    if workers == 1 or len(members) < 2:
        for member in members:
            yield measure_member(root, member, thresholds, step)
        return
    global _JOB
    _JOB = (str(root), thresholds, step)
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(members)), initializer=_init_worker,
                                                      maxtasksperchild=50) as pool:
            yield from pool.imap(_measure_in_worker, members)
    finally:
        _JOB = None


def columns_for(axes: Sequence[str]) -> list[str]:
    """population.csv's columns: id, path, the axes, the other ``SETTINGS``, then ``MEASURES``."""
    return list(dict.fromkeys(["id", "path", *axes, *SETTINGS, *MEASURES]))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return str(value)


def parse_cell(text: str) -> Any:
    """A population.csv cell back as a value: '' -> None, numbers as int / float, True / False as bool."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def read_population_csv(file: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a population.csv with typed values (``parse_cell``)."""
    with open(file, newline="") as handle:
        return [{k: parse_cell(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _varying(members: Sequence[Member], rows: Sequence[dict]) -> list[str]:
    candidates = [s for s in SETTINGS if s not in ("seed", "split_seed")]
    return pop.varying_axes(rows, candidates)


def output_folder(path: str | os.PathLike, step: int | None = None) -> Path:
    """Where the analysis of a population goes by default: ``path/grokscope/``, or
    ``path/grokscope/step_N/`` for the analysis at step N.

    >>> output_folder("sweeps/alpha").as_posix(), output_folder("sweeps/alpha", 1000).as_posix()
    ('sweeps/alpha/grokscope', 'sweeps/alpha/grokscope/step_1000')
    """
    folder = Path(path) / OUTPUT_FOLDER
    return folder if step is None else folder / f"step_{step}"


def check_step(step: Any, where: str = "analyze") -> int | None:
    """``step`` as given when it is None or a whole number >= 0; GrokscopeError otherwise."""
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
        raise GrokscopeError(f"step = {step!r}", expected="a whole number >= 0 (a checkpoint step), or none "
                             "for each member's final checkpoint", where=where)
    return step


def analyze_population(path: str | os.PathLike, out: str | os.PathLike | None = None, *, workers: int = 1,
                       axes: Sequence[str] | None = None, bins: dict | None = None, report: bool = True,
                       thresholds=None, progress: bool = False, step: int | None = None
                       ) -> tuple[pop.Population, Path]:
    """Measure every member of the sweep or folder ``path`` and write population.csv, summary.json
    and (with ``report``) report.html into ``out`` (default ``output_folder(path, step)``).

    ``axes`` names the two axes of the main phase diagrams (default: ``population.default_axes`` of
    the swept axes). ``step`` measures each member's checkpoint at that step instead of its final one
    (a member without one gets a row with its error). Returns the Population and the output folder.
    """
    from grokscope.progress import progress_bar

    check_step(step)
    root = Path(path)
    if not root.is_dir():
        raise GrokscopeError("not a folder", expected="a sweep folder or a folder of runs", where=str(root))
    sweep = is_sweep(root)
    if sweep:
        members, swept, spec = sweep_members(root)
        members = [m for m in members if (root / m.path).exists()]
        pending = [m for m in sweep_members(root)[0] if not (root / m.path).exists()]
    else:
        members, swept, spec, pending = folder_members(root), [], None, []
    if not members:
        raise GrokscopeError("no member with a run folder yet" if sweep else "no run or model",
                             expected="a sweep with trained members or a folder of runs", where=str(root))
    out_dir = Path(out) if out is not None else output_folder(root, step)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if not sweep:  # the axes of a plain folder are the settings that vary: known once members are read
        with progress_bar(len(members), desc="analyze population", enabled=progress, unit="member") as bar:
            for row in stream_rows(root, members, workers=workers, thresholds=thresholds, step=step):
                rows.append(row)
                bar.update(1)
        swept = _varying(members, rows)
        rows = [{c: row.get(c) for c in columns_for(swept)} for row in rows]
        text = _csv_text(columns_for(swept), rows)
        atomic_write(out_dir / POPULATION_FILE, text)
    else:
        columns = columns_for(swept)
        temporary = out_dir / f".{POPULATION_FILE}.partial"
        with open(temporary, "w", newline="") as handle, \
                progress_bar(len(members), desc="analyze sweep", enabled=progress, unit="member") as bar:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(columns)
            for row in stream_rows(root, members, workers=workers, thresholds=thresholds, step=step):
                writer.writerow([_cell(row.get(c)) for c in columns])  # streamed to disk as measured
                rows.append({c: row.get(c) for c in columns})
                bar.update(1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, out_dir / POPULATION_FILE)
    chosen = list(axes) if axes else [a for a in pop.default_axes(swept, rows) if a is not None]
    for axis in chosen:
        if not any(axis in r for r in rows):
            raise GrokscopeError(f"axis {axis!r}", expected=f"a column of population.csv, e.g. one of "
                                 f"{swept or list(SETTINGS)}", where="--axes")
    summary = population_summary(rows, swept, chosen, bins, source=str(root),
                                 fmt="sweep" if sweep else "collection", pending=pending, spec=spec, step=step)
    write_json(out_dir / SUMMARY_FILE, summary)
    population = pop.Population(rows=rows, axes=list(swept), root=str(root), summary=summary)
    if report:
        from grokscope.population_report import write_population_report

        write_population_report(out_dir / REPORT_FILE, summary, rows, swept, chosen, bins)
    return population, out_dir


def _csv_text(columns: list[str], rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buffer.getvalue()


def population_summary(rows: Sequence[dict], swept: Sequence[str], chosen: Sequence[str], bins: dict | None, *,
                       source: str, fmt: str, pending: Sequence[Member] = (), spec: dict | None = None,
                       step: int | None = None) -> dict:
    """summary.json of a population: label fractions overall and per cell of the swept axes.

    ``step`` is the checkpoint step every member was measured at (None: each member's final one)."""
    measured = [r for r in rows if not r.get("error")]
    summary = {"grokscope_version": __version__, "source": {"path": source, "format": fmt},
               "step": step, "members": len(rows) + len(pending), "analysed": len(measured),
               "phase_axes": list(chosen),
               **pop.summary(measured, list(swept), bins),
               "skipped": [{"path": r.get("path"), "error": r.get("error")} for r in rows if r.get("error")]
               + [{"path": m.path, "error": f"status {m.status or 'pending'}: no run folder yet"} for m in pending]}
    if spec is not None:
        summary["spec"] = spec
    return json_safe(summary)


def load_sweep(path: str | os.PathLike, *, reanalyze: bool = False, workers: int = 1,
               progress: bool = False, step: int | None = None) -> pop.Population:
    """The Population of the sweep (or folder of runs) ``path``, at each member's final checkpoint or
    at checkpoint ``step``.

    Reads ``output_folder(path, step)/population.csv`` when it covers every member that has a run
    folder; otherwise (or with ``reanalyze``) analyses the members first (``analyze_population``).
    """
    check_step(step, where="load_sweep")
    root = Path(path)
    if not root.is_dir():
        raise GrokscopeError("not a folder", expected="a sweep folder or a folder of runs", where=str(root))
    table = output_folder(root, step) / POPULATION_FILE
    if table.is_file() and not reanalyze:
        rows = read_population_csv(table)
        known = {str(r.get("id")) for r in rows}
        if is_sweep(root):
            members, swept, _ = sweep_members(root)
            current = all(m.id in known for m in members if (root / m.path).exists())
        else:
            members, swept = folder_members(root), None
            current = all(m.id in known for m in members)
        if current:
            summary_file = output_folder(root, step) / SUMMARY_FILE
            summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
            if swept is None:
                swept = list((summary or {}).get("axes") or _varying(members, rows))
            return pop.Population(rows=rows, axes=list(swept), root=str(root), summary=summary)
    population, _ = analyze_population(root, workers=workers, progress=progress, step=step)
    return population


def format_population(population: pop.Population) -> str:
    """The short table ``grokscope analyze`` prints for a population: labels overall and per cell."""
    summary = population.summary or {}
    stats = population.labels()
    lines = [f"{len(population)} members in {population.root} (axes: {', '.join(population.axes) or 'none'})",
             "labels       " + ", ".join(f"{label} {count}" for label, count in stats["counts"].items())
             + (f"; pizza share {stats['pizza_share']:.2f}" if stats["pizza_share"] is not None else "")]
    axes = summary.get("phase_axes") or []
    if axes:
        lines.append(f"  {'cell':<28} {'n':>4} {'clock':>6} {'pizza':>6} {'other':>6} {'GS':>7} {'DI':>7}")
        for cell in pop.cells([r for r in population.rows if not r.get("error")], axes):
            name = ", ".join(f"{a}={cell[a]}" for a in axes)
            gs, di = cell["median_gradient_symmetricity"], cell["median_distance_irrelevance"]
            lines.append(f"  {name[:28]:<28} {cell['n']:>4} {cell['counts']['clock']:>6} {cell['counts']['pizza']:>6} "
                         f"{cell['counts']['uninterpreted']:>6} {'-' if gs is None else f'{gs:.3f}':>7} "
                         f"{'-' if di is None else f'{di:.3f}':>7}")
    skipped = summary.get("skipped") or []
    lines += [f"skipped      {s['path']}: {s['error']}" for s in skipped[:5]]
    return "\n".join(lines)
