"""Phase detection on hand-built tables whose boundaries are worked out in the comments."""

import json

import pytest

from grokscope.errors import GrokscopeError
from grokscope.phases import find_phases

NAN = float("nan")


def grokking_table():
    return {
        "step":          [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110],
        "train_acc":     [0, 0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        "test_acc":      [0, 0, 0.1, 0.1, 0.2, 0.3, 0.6, 0.995, 1, 1, 1, 1],
        "test_loss":     [4, 6, 10, 9, 8, 4.5, 1.0, 1e-2, 1e-3, 1e-4, 1e-5, 1e-5],
        "excluded_loss": [4, 2, 0.5, 0.2, 0.3, 0.8, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0],
    }


def test_boundaries_of_a_grokking_table():
    phases = find_phases(grokking_table())
    # train_acc >= 0.99 first at 20; test_acc at 70 (0.995): delay 3.5.
    assert (phases.memorization_step, phases.grokking_step, phases.delay_ratio) == (20, 70, 3.5)
    assert phases.grokked
    # Excluded loss lowest (0.2) at 30 within [20, 70], then rises to 3.0 >= 2 x 0.2.
    assert phases.circuit_formation_start == 30
    # Test loss peaks at 10 (step 20); first <= 5 at step 50.
    assert phases.circuit_formation_end == 50
    # log 10 - 0.9 (log 10 - log 1e-5) = log 3.98e-5: 1e-4 is above, 1e-5 (step 100) below.
    assert phases.cleanup_end_step == 100
    assert phases.memorization_step < phases.circuit_formation_end <= phases.grokking_step <= phases.cleanup_end_step
    assert set(phases.method) == {"memorization_step", "grokking_step", "delay_ratio", "circuit_formation_start",
                                  "circuit_formation_end", "cleanup_end_step"}
    assert phases.notes == []
    json.dumps(phases.to_dict())


def test_rows_in_any_order():
    table = grokking_table()
    order = [5, 0, 11, 3, 1, 8, 2, 10, 4, 9, 6, 7]
    shuffled = {name: [values[i] for i in order] for name, values in table.items()}
    assert find_phases(shuffled) == find_phases(table)


def test_a_run_that_never_groks_says_so():
    table = grokking_table()
    table["test_acc"] = [min(v, 0.9) for v in table["test_acc"]]
    phases = find_phases(table)
    assert phases.memorization_step == 20 and phases.circuit_formation_start == 30
    assert phases.grokking_step is None and not phases.grokked
    assert phases.delay_ratio is None and phases.circuit_formation_end is None and phases.cleanup_end_step is None
    assert any("did not grok" in note for note in phases.notes)


def test_drop_after_grokking_is_clipped_to_grokking():
    table = grokking_table()
    table["test_loss"] = [4, 6, 10, 9, 8, 7, 6.5, 6, 1e-3, 1e-4, 1e-5, 1e-5]   # still 6 at step 70
    phases = find_phases(table)
    assert phases.circuit_formation_end == phases.grokking_step == 70


def test_no_excluded_rise_gives_no_circuit_start():
    table = grokking_table()
    table["excluded_loss"] = [4, 2, 0.5, 0.4, 0.3, 0.3, 0.35, 0.4, 0.5, 0.5, 0.5, 0.5]   # at most 1.7x
    phases = find_phases(table)
    assert phases.circuit_formation_start is None
    assert any("does not rise" in note for note in phases.notes)


def test_without_a_split_uses_full_accuracy_and_loss():
    table = grokking_table()
    table["full_acc"], table["full_loss"] = table.pop("test_acc"), table.pop("test_loss")
    table["train_acc"] = [NAN] * 12
    table["test_acc"], table["test_loss"] = [NAN] * 12, [NAN] * 12
    phases = find_phases(table)
    assert phases.grokking_step == 70 and "full_acc" in phases.method["grokking_step"]
    assert phases.memorization_step is None and phases.delay_ratio is None
    assert phases.circuit_formation_end is None and phases.cleanup_end_step is None


def test_memorisation_at_step_zero_has_no_ratio():
    table = {"step": [0, 5, 9], "train_acc": [1.0, 1.0, 1.0], "test_acc": [0.2, 0.995, 1.0]}
    phases = find_phases(table)
    assert (phases.memorization_step, phases.grokking_step, phases.delay_ratio) == (0, 5, None)


def test_single_model_row():
    phases = find_phases({"step": [0], "full_acc": [1.0], "full_loss": [1e-6], "excluded_loss": [3.0],
                          "train_acc": [NAN], "test_acc": [NAN]})
    assert phases.grokking_step == 0 and phases.grokked and phases.memorization_step is None


def test_zero_losses_do_not_break_the_log_scale():
    table = grokking_table()
    table["test_loss"] = [4, 6, 10, 9, 8, 4.5, 1.0, 1e-2, 0.0, 0.0, 0.0, 0.0]
    assert find_phases(table).cleanup_end_step == 80


@pytest.mark.parametrize("table, match", [({"train_acc": [1.0]}, "step"),
                                          ({"step": [0, 1], "train_acc": [1.0]}, "lengths")])
def test_malformed_tables(table, match):
    with pytest.raises(GrokscopeError, match=match):
        find_phases(table)


def test_empty_table():
    phases = find_phases({"step": []})
    assert phases.grokking_step is None and phases.notes == ["empty table"]
