"""Train-only measures and the phase detector (grokscope.monitor) against analytic ground truth."""

import math
import tempfile
from pathlib import Path

import pytest
import torch

from grokscope import checkpoints as ck
from grokscope.analysis import analyze
from grokscope.constructions import exact_clock_model, random_model
from grokscope.errors import GrokscopeError
from grokscope.formats import native
from grokscope.formats.base import Run
from grokscope.measures import progress_measures, weight_measures
from grokscope.models import final_logits, parameter_state_dict
from grokscope.monitor import (LOG_MONITOR_COLUMNS, MAX_KEY_FREQS, PHASE_COLUMN, PHASES, TRAIN_ONLY_COLUMNS,
                               WEIGHT_FALL, PhaseDetector, TrainOnlyMonitor, describe_detection, detect_phases, key_fit,
                               train_free_key_frequencies, train_only_measures)
from grokscope.outputs import summary_dict
from grokscope.tasks import Task


@pytest.mark.parametrize("task, freqs", [(Task(p=23), [3, 7]), (Task(p=29, eq_token=False), [2, 5, 11])])
def test_exact_clock_on_its_train_rows(task, freqs):
    # The clock's logits are exactly C * sum_k cos(w_k(a+b-c)): all in the key span, no constant part.
    model = exact_clock_model(task, freqs)
    m = train_only_measures(model, task, task.split(0.4, seed=1))
    assert m.key_freqs == freqs and m.rows == "train" and m.n_rows == int(0.4 * task.n_inputs)
    assert m.train_acc == 1.0 and m.restricted_acc == 1.0
    # Restricted logits reproduce L (float32 forward: ~1e-7 relative error in logits of size ~16,
    # losses ~1e-6, so compare with 1e-3 relative).
    assert m.restricted_loss == pytest.approx(m.train_loss, rel=1e-3)
    # Removing K leaves a constant per class: the excluded loss is exactly chance, ln p (up to the
    # float32 residue of the fit, ~1e-6 of the logit scale).
    assert m.excluded_loss == pytest.approx(math.log(task.p), rel=1e-4)


def test_on_the_full_grid_the_fit_is_the_n23_projection():
    # With every row the least-squares fit is [N23]'s orthogonal projection: same losses as measures.py.
    task = Task(p=23)
    model = random_model(task, seed=3)
    m = train_only_measures(model, task, None)
    reference = progress_measures(model, task, m.key_freqs)          # no split: excluded over all rows
    assert m.rows == "all" and m.n_rows == task.n_inputs and "split unknown" in m.notes[-1]
    # Both are float64 computations from the same float32 logits; only the solver differs (~1e-12).
    assert m.restricted_loss == pytest.approx(reference.restricted_loss, rel=1e-9)
    assert m.excluded_loss == pytest.approx(reference.excluded_loss, rel=1e-9)
    assert m.train_loss == pytest.approx(reference.full_loss, rel=1e-12)


def test_key_fit_uses_only_the_rows_it_is_given():
    # A function of a + b at 2 frequencies plus a per-class offset, seen on 30% of the grid: the fit on
    # those rows recovers it exactly, and test rows never enter (changing them changes nothing).
    task = Task(p=31)
    a, b = task.operands().T.double()
    c = torch.arange(31).double()
    w = 2 * math.pi / 31
    L = 3 * torch.cos(w * 4 * (a + b)[:, None] - w * 4 * c) + torch.sin(w * 9 * (a + b))[:, None] + c / 7
    rows = task.split(0.3, seed=2)
    restricted, excluded = key_fit(L[rows], rows, task, [4, 9])
    # float64 least squares on a well-conditioned design: residues ~1e-13.
    torch.testing.assert_close(restricted, L[rows], rtol=0, atol=1e-10)
    torch.testing.assert_close(excluded, (c / 7).expand(len(rows), -1), rtol=0, atol=1e-10)


def test_weight_measures_and_key_frequencies_from_a_model_or_its_state_dict():
    task = Task(p=23)
    model = random_model(task, seed=0)
    state = parameter_state_dict(model)
    state["blocks.0.attn.mask"] = torch.ones(3, 3, dtype=torch.bool)       # a buffer is ignored
    logits = final_logits(model, task.tokens()).detach()
    rows = task.split(0.5, seed=0)
    from_model = train_only_measures(model, task, rows)
    from_state = train_only_measures(state, task, rows, train_logits=logits[rows])
    assert from_model.as_row() == pytest.approx(from_state.as_row(), rel=1e-12, nan_ok=True)
    reference = weight_measures(model, task)
    for name in ("sum_sq_weights", "gini_W_E", "gini_W_L"):
        assert getattr(from_model, name) == pytest.approx(reference[name], rel=1e-12), name
    # A random embedding spreads its norm over every frequency: the cap keeps the largest five.
    assert len(from_model.key_freqs) == MAX_KEY_FREQS
    assert len(train_free_key_frequencies(model, task, "B", max_freqs=None)) > MAX_KEY_FREQS
    assert train_free_key_frequencies(exact_clock_model(task, [2, 9]), task, "C") == [2, 9]


def test_bad_input_names_what_was_wrong():
    task = Task(p=23)
    state = parameter_state_dict(random_model(task))
    with pytest.raises(GrokscopeError, match="state dict without train_logits"):
        train_only_measures(state, task, task.split(0.5))
    with pytest.raises(GrokscopeError, match=r"train_only_measures: found 1 rows in 529..529"):
        train_only_measures(state, task, torch.tensor([529]))
    with pytest.raises(GrokscopeError, match=r"found train logits of shape \(3, 23\)"):
        train_only_measures(state, task, task.split(0.5), train_logits=torch.zeros(3, 23))
    with pytest.raises(GrokscopeError, match="rule 'A'.*train-free"):
        train_free_key_frequencies(state, task, "A")
    with pytest.raises(GrokscopeError, match="'embed.W_E'"):
        train_free_key_frequencies({"x": torch.zeros(2)}, task)
    with pytest.raises(GrokscopeError, match="detect_phases: found columns.*trainonly_restricted_loss"):
        detect_phases({"step": [0], "trainonly_train_acc": [1.0], "trainonly_train_loss": [1.0]}, 23)


def test_other_operations_get_nan_with_a_note():
    task = Task(p=23, op="sub")
    m = train_only_measures(random_model(task), task, task.split(0.5))
    assert math.isnan(m.excluded_loss) and math.isnan(m.restricted_loss) and "op 'sub'" in m.notes[0]
    assert not math.isnan(m.train_loss) and not math.isnan(m.gini_W_E)


def _rows(ratios, train_loss=1e-3, first_step=0, every=10):
    """Rows for the detector with a given restricted / train loss ratio at each step (memorised)."""
    return [(first_step + i * every, 1.0, train_loss, r * train_loss) for i, r in enumerate(ratios)]


def _feed(rows):
    """Rows (step, train acc, train loss, restricted loss[, sum of squared weights]) through one detector."""
    detector = PhaseDetector(p=59)
    phases = [detector.update(s, train_acc=acc, train_loss=tl, restricted_loss=rl,
                              sum_sq_weights=rest[0] if rest else math.nan).phase for s, acc, tl, rl, *rest in rows]
    return detector.detection, phases


def _table(rows):
    columns = ("step", "trainonly_train_acc", "trainonly_train_loss", "trainonly_restricted_loss",
               "trainonly_sum_sq_weights")
    return {name: [row[i] for row in rows] for i, name in enumerate(columns[:len(rows[0])])}


def test_detector_stays_quiet_while_memorising_or_while_the_ratio_only_grows():
    before, phases = _feed([(s, 0.5, 0.1, 1e-9) for s in range(0, 100, 10)])      # never memorised
    assert before.memorised_step is None and set(phases) == {"memorising"}
    # A run without weight decay: the train loss keeps falling, the restricted loss does not.
    growing, phases = _feed(_rows([10 * 1.5 ** i for i in range(30)]))
    assert growing.circuit_step is None and set(phases) == {"memorising"}
    assert growing.peak_step == 290 and growing.forecast_step is None
    # Noise below the factor FALL = 2 is no alarm either.
    noisy, _ = _feed(_rows([100, 60, 100, 55, 100, 51]))
    assert noisy.circuit_step is None
    # Too little data: weight decay raises the train loss after memorisation, so r halves, but the key
    # frequencies explain nothing (restricted loss near chance, ln 59 = 4.08): no alarm.
    bump = [(0, 1.0, 4e-3, 4.0), (10, 1.0, 1e-2, 3.9), (20, 1.0, 2e-2, 3.8)]
    at_chance, _ = _feed(bump)
    assert at_chance.peak_step == 0 and at_chance.ratio < at_chance.peak_ratio / 2 and at_chance.circuit_step is None
    # The same fall with a restricted loss below ln(59) / 2 is an alarm.
    assert _feed([(s, a, t, r / 4) for s, a, t, r in bump])[0].circuit_step == 10


def _turning_weights(peak_at=80, every=2, end=200):
    """A memorised run whose weight norm peaks at ``peak_at`` (1000) and then shrinks by 0.5% a row,
    with the restricted loss at 0.3 nats (below ln(59) / 2 = 2.04) and r growing all along."""
    rows = []
    for i, step in enumerate(range(60, end + 1, every)):
        w = 1000.0 - (peak_at - step) ** 2 / 100 if step <= peak_at else 1000.0 * 0.995 ** ((step - peak_at) / every)
        rows.append((step, 1.0, 1e-2 / (i + 1), 0.3, w))
    return rows


def test_the_weight_trigger_fires_one_row_after_the_norm_turns_over():
    # The norm's peak is the row at step 80; the next row is 0.5% below it (> WEIGHT_FALL = 0.1%).
    detection, phases = _feed(_turning_weights())
    assert detection.memorised_step == 60 and detection.weight_peak_step == 80
    assert detection.circuit_step == 82 and detection.trigger == "weight" and detection.since_step == 80
    assert phases[:12] == ["memorising"] * 11 + ["circuit forming"]
    assert detection.circuit_gap == 2  # the rows are 2 steps apart
    assert "since step 80 (detected at 82 by the weight trigger, rows 2 steps apart there)" in describe_detection(
        detection.to_dict())
    # r only grows here, so the ratio trigger alone (a table without the weight column) never fires.
    assert _feed([row[:4] for row in _turning_weights()])[0].circuit_step is None
    # A fall smaller than WEIGHT_FALL is no alarm: a flat norm wobbling by 0.05% stays quiet.
    flat = [(s, 1.0, 1e-3 / (i + 1), 0.3, 1000.0 * (1 - WEIGHT_FALL / 2 * (i % 2)))
            for i, s in enumerate(range(60, 400, 2))]
    assert _feed(flat)[0].circuit_step is None


def test_the_weight_trigger_needs_memorisation_and_key_frequencies_that_fit():
    # Too little data: weight decay shrinks a memorised network whose key frequencies explain nothing
    # (restricted loss 3.9, near chance ln 59 = 4.08): no alarm however far the norm falls.
    at_chance = [(s, a, t, 3.9, w) for s, a, t, _, w in _turning_weights()]
    assert _feed(at_chance)[0].circuit_step is None
    # No weight decay: the norm grows after memorisation (ever more slowly) and never turns over.
    no_decay = [(s, 1.0, 1e-2 / (i + 1), 0.3, 3000.0 - 1000.0 / (i + 1)) for i, s in enumerate(range(60, 1001, 2))]
    assert _feed(no_decay)[0].circuit_step is None
    # A norm falling while train accuracy is still below 99% counts for nothing: the peak is taken
    # from the memorised rows on, and there the norm rises.
    early = [(s, 0.5, 1.0, 0.3, 2000.0 - s) for s in range(0, 60, 2)] + no_decay
    assert _feed(early)[0].circuit_step is None


def test_detector_moves_through_the_phases_and_forecasts_an_exponential_decay():
    # r = 100 exp(-(s - 100) / 50) after a peak at s = 100: it crosses 1 at 100 + 50 ln 100 = 330.3.
    steps = list(range(0, 501, 10))
    rows = [(s, 1.0, 1e-3, 1e-3 * (s + 1 if s <= 100 else 100 * math.exp(-(s - 100) / 50))) for s in steps]
    detection, phases = _feed(rows)
    assert detection.memorised_step == 0 and detection.peak_step == 100 and detection.since_step == 100
    assert detection.circuit_step == 140 and detection.trigger == "ratio"   # r <= 101 / 2: 100 e^-0.8 = 44.9
    assert detection.cleanup_step == 220                  # r <= sqrt(101) = 10.05: 100 e^-2.4 = 9.07
    assert detection.generalised_step == 340              # r <= 1
    assert phases.index("circuit forming") == steps.index(140) and phases[-1] == "generalised"
    assert [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]] == list(PHASES)
    # The line through log r since the alarm is exact here: the forecast is the crossing, 330.
    assert detection.forecast_step == 330
    # Replaying the same rows as a table gives the same conclusion (it is the same causal rule).
    assert detect_phases(_table(rows), 59) == (detection, phases)
    # With the weight norm turning over at step 60 the alarm comes at the next row, 70, before r's
    # peak; the phases after it and the forecast (fitted from r's peak on) are unchanged.
    weighted = [(*row, 1000.0 - abs(s - 60)) for row, s in zip(rows, steps)]
    early, early_phases = _feed(weighted)
    assert early.circuit_step == 70 and early.trigger == "weight" and early.since_step == 60
    assert early.peak_step == 100 and early.forecast_step == 330
    assert (early.cleanup_step, early.generalised_step) == (220, 340)
    assert early_phases[steps.index(70):steps.index(220)] == ["circuit forming"] * (steps.index(220) - steps.index(70))


def test_appending_rows_never_changes_an_earlier_phase():
    # Causality: for every prefix of a run, the replayed phases and detection are those the detector
    # had after the same rows of the whole run.
    steps = list(range(0, 601, 10))
    rows = [(s, min(1.0, s / 50), 1e-3 * (1 + 0.2 * math.sin(s / 7)),
             1e-3 * (s + 1 if s <= 150 else 150 * math.exp(-(s - 150) / 60)), 1000.0 - abs(s - 120) + 5 * math.sin(s))
            for s in steps]
    live = PhaseDetector(p=59)
    states = []
    for s, acc, tl, rl, w in rows:
        live.update(s, train_acc=acc, train_loss=tl, restricted_loss=rl, sum_sq_weights=w)
        states.append(live.detection.to_dict())
    _, phases = detect_phases(_table(rows), 59)
    assert len(set(phases)) == len(PHASES)                 # the run goes through every phase
    for n in range(1, len(rows) + 1):
        prefix_detection, prefix_phases = detect_phases(_table(rows[:n]), 59)
        assert prefix_phases == phases[:n]
        assert prefix_detection.to_dict() == states[n - 1]


def test_monitor_columns_and_replay_match_the_live_detector():
    task = Task(p=23)
    rows = task.split(0.5, seed=0)
    live, log = TrainOnlyMonitor(task, rows), {column: [] for column in ("step", *LOG_MONITOR_COLUMNS)}
    for step, seed in enumerate(range(4)):
        model = random_model(task, seed=seed)
        row = live.measure(parameter_state_dict(model), step, train_logits=final_logits(model, task.tokens()[rows]))
        assert list(row) == list(LOG_MONITOR_COLUMNS) and row[PHASE_COLUMN] in PHASES
        log["step"].append(step)
        for column, value in row.items():
            log[column].append(value)
    assert live.calls == 4 and live.seconds > 0
    replayed = TrainOnlyMonitor(task, rows)
    replayed.replay(log)
    assert replayed.detection == live.detection


def test_training_logs_the_train_only_columns(tiny_run_dir, tiny_config):
    run = native.read(tiny_run_dir)
    assert set(LOG_MONITOR_COLUMNS) <= set(run.log)
    assert set(run.log[PHASE_COLUMN]) <= set(PHASES)
    # The live columns are the train-only measures of the checkpoint at the same step (same weights;
    # the training forward and this one differ only in float32 summation order: 1e-4 relative).
    step = run.steps[-1]
    i = run.log["step"].index(step)
    again = train_only_measures(run.model(-1), run.task, run.train_indices).as_row()
    for column in TRAIN_ONLY_COLUMNS:
        assert run.log[column][i] == pytest.approx(again[column], rel=1e-4, abs=1e-9), column
    assert run.config["status"]["monitor_s"] >= 0


def test_an_older_log_without_the_columns_still_reads(tmp_path):
    log = {"step": [0, 10], "train_loss": [4.1, 1.0], "test_loss": [4.2, 3.3], "train_acc": [0.0, 1.0],
           "test_acc": [0.5, 0.5]}
    ck.atomic_write(tmp_path / ck.LOG_CSV, ck.log_to_csv(log))
    assert ck.read_log(tmp_path / ck.LOG_CSV) == log
    newer = {**log, "trainonly_excluded_loss": [4.0, float("nan")], PHASE_COLUMN: ["memorising", "circuit forming"]}
    ck.atomic_write(tmp_path / ck.LOG_CSV, ck.log_to_csv(newer))
    back = ck.read_log(tmp_path / ck.LOG_CSV)
    assert back[PHASE_COLUMN] == newer[PHASE_COLUMN] and back["trainonly_excluded_loss"][0] == 4.0
    assert math.isnan(back["trainonly_excluded_loss"][1])


def test_analyze_reports_train_only_measures_when_the_split_is_unknown():
    task = Task(p=23)
    model = exact_clock_model(task, [3, 7])
    state = parameter_state_dict(model)
    run = Run(task, model.cfg, [100], lambda i: state, "clock", "memory")
    result = analyze(run, classify=None, views=False)
    row = result.final_row
    assert math.isnan(row["train_loss"]) and row["trainonly_restricted_acc"] == 1.0
    assert row["trainonly_excluded_loss"] == pytest.approx(math.log(23), rel=1e-4)   # as in the first test
    summary = summary_dict(result)["train_only"]
    assert summary["rows"] == "all (split unknown)" and summary["final"]["n_key_freqs"] == 2
    assert summary["restricted_to_train_ratio"] == pytest.approx(1.0, rel=1e-3)     # as in the first test
    assert summary["detection"] is None and result.train_only is None               # one checkpoint
    two = analyze(Run(task, model.cfg, [100, 200], lambda i: state, "clock", "memory"), classify=None, views=False)
    assert two.train_only.memorised_step == 100 and summary_dict(two)["train_only"]["detection"]["rule"]


@pytest.mark.slow
def test_live_detector_fires_before_test_accuracy_moves_on_the_fast_preset(fast_run_dir):
    # Seed 0 of the fast preset (docs/monitor.md): the alarm comes before test accuracy reaches 50%
    # (about step 200), and the run ends generalised by the train-only rule too.
    log = native.read(fast_run_dir).log
    detection, phases = detect_phases(log, 59)
    assert phases == log[PHASE_COLUMN]                      # the live column is the causal replay
    test50 = next(s for s, a in zip(log["step"], log["test_acc"]) if a >= 0.5)
    test99 = next(s for s, a in zip(log["step"], log["test_acc"]) if a >= 0.99)
    assert detection.memorised_step <= detection.circuit_step < test50
    # The weight norm turns over 12 to 16 steps after memorisation, the ratio halves 20 to 30 later.
    assert detection.trigger == "weight" and detection.circuit_step - detection.memorised_step <= 40
    assert detection.phase == "generalised" and detection.generalised_step <= test99
    # The forecast made at cleanup lands within a quarter of the test-99% step (measured: 1% off on the
    # design run of seed 0, replayed every 10 steps).
    assert detection.cleanup_forecast_step == pytest.approx(test99, rel=0.25)


def test_resuming_a_run_logged_before_the_monitor_pads_its_rows():
    from grokscope.training import _with_monitor_columns

    old = {"step": [0, 10], "train_loss": [4.1, 1.0], "test_loss": [4.2, 3.3], "train_acc": [0.0, 1.0],
           "test_acc": [0.5, 0.5]}
    log = _with_monitor_columns({k: list(v) for k, v in old.items()})
    assert all(len(log[c]) == 2 for c in LOG_MONITOR_COLUMNS) and log[PHASE_COLUMN] == ["", ""]
    monitor = TrainOnlyMonitor(Task(p=23), None)
    monitor.replay(log)                                   # NaN rows leave the detector untouched
    assert monitor.detection == PhaseDetector(23).detection
    back = ck.read_log(ck.atomic_write(Path(tempfile.mkdtemp()) / ck.LOG_CSV, ck.log_to_csv(log)))
    assert back["step"] == [0, 10] and back[PHASE_COLUMN] == ["", ""]


def test_analyze_adds_pathway_columns_and_the_train_only_figure_on_request():
    from grokscope.pathways import pathway_measures

    task = Task(p=23)
    models = [random_model(task, seed=s) for s in (0, 1)]
    states = [parameter_state_dict(m) for m in models]
    rows = task.split(0.5, seed=0)
    run = Run(task, models[0].cfg, [0, 10], lambda i: states[i], "random", "memory", train_indices=rows)
    result = analyze(run, classify=None, views=False, pathways=True)
    expected = pathway_measures(models[1], task, rows)
    for name, value in expected.items():
        assert result.table[name][1] == pytest.approx(value, rel=1e-12), name
    titles = [title for title, _ in result.figures()]
    assert "Train-only measures" in titles
    figure = dict(result.figures())["Train-only measures"]
    assert {"pathway distance", "excluded loss (train-only)"} <= {trace.name for trace in figure.data}
