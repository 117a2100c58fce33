"""grokscope.outputs: strict JSON, the measures.csv text, the terminal table and the default output folder.

The result under test is assembled from known parts: a hand-written table whose phase boundaries are
known by construction, and the classification of an exact clock model (constructions.exact_clock_model).
"""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from grokscope.analysis import AnalysisResult
from grokscope.classifier import classify
from grokscope.constructions import exact_clock_model
from grokscope.fourier import KeyFrequencies
from grokscope.outputs import (collection_csv, collection_summary, default_out_dir, format_table, json_safe,
                               measures_csv, summary_dict)
from grokscope.phases import find_phases
from grokscope.tasks import Task

TASK = Task(p=23)
KEY_FREQS = [4, 9]
# train accuracy reaches 0.99 at step 100, test accuracy at step 1000: memorisation 100, grokking 1000, delay 10
TABLE = {
    "step": [0, 50, 100, 200, 500, 1000, 1500, 2000],
    "train_loss": [3.1, 1.0, 0.01, 0.005, 0.004, 0.003, 0.001, 0.0005],
    "test_loss": [3.1, 3.3, 5.0, 6.0, 3.0, 0.1, 0.001, 0.0005],
    "train_acc": [0.05, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    "test_acc": [0.04, 0.05, 0.05, 0.1, 0.5, 1.0, 1.0, 1.0],
    "full_acc": [0.045, 0.2, 0.3, 0.4, 0.7, 1.0, 1.0, 1.0],
    "restricted_loss": [3.0, 2.9, 2.0, 1.0, 0.5, 0.01, 1e-300, 1 / 3],
    "excluded_loss": [3.0, 2.0, 1.0, 1.5, 3.0, 4.0, 4.0, math.nan],
}


@pytest.fixture(scope="module")
def result() -> AnalysisResult:
    classification = classify(exact_clock_model(TASK, KEY_FREQS), TASK)
    info = {"source": "runs/p23", "format": "native", "task": TASK.to_dict(), "alpha": 1.0}
    return AnalysisResult(run_info=info, task=TASK, key_freqs=KeyFrequencies(KEY_FREQS, "A", 0.85),
                          table={k: list(v) for k, v in TABLE.items()}, phases=find_phases(TABLE),
                          skipped=[{"path": "runs/p23/checkpoints/step_0000300.safetensors", "error": "truncated"}],
                          classification=classification)


@pytest.mark.parametrize("value,expected", [
    (math.nan, None), (math.inf, None), (-math.inf, None), (1.5, 1.5), (3, 3), ("nan", "nan"), (None, None),
    ((1, math.nan), [1, None]), ({"a": [math.nan, {"b": (2.0,)}]}, {"a": [None, {"b": [2.0]}]}),
    (np.float64(math.nan), None), (np.float32(0.5), 0.5), (np.int64(7), 7), (torch.tensor(2.5), 2.5),
    (torch.tensor(math.nan), None), ({1: 2}, {"1": 2}),
], ids=repr)
def test_json_safe(value, expected):
    safe = json_safe(value)
    assert safe == expected and type(safe) is type(expected)
    assert json.loads(json.dumps(safe, allow_nan=False)) == expected


def test_summary_is_strict_json(result):
    summary = summary_dict(result)
    text = json.dumps(summary, allow_nan=False)  # raises on NaN / inf
    assert json.loads(text) == summary
    assert summary["final"]["excluded_loss"] is None  # the last row's NaN
    assert summary["final"]["restricted_loss"] == 1 / 3 and summary["final"]["accuracy"] == 1.0


def test_summary_fields_from_the_result(result):
    summary = summary_dict(result)
    assert summary["task"]["p"] == 23 and summary["task"]["n_ctx"] == 3 and summary["task"]["eq_token"] is True
    assert summary["checkpoints"] == {"count": 8, "steps": TABLE["step"]}
    assert summary["key_frequencies"] == {"freqs": KEY_FREQS, "rule": "A", "threshold": 0.85, "basis": None}
    assert summary["task"]["group"] == {"name": "Z_23", "N": 23, "relabelling": "identity", "generator": None,
                                        "sign_b": 1}
    phases = summary["phases"]
    assert (phases["memorization_step"], phases["grokking_step"], phases["delay_ratio"]) == (100, 1000, 10.0)
    assert phases["cleanup_end_step"] == 1500  # log test loss 90% of the way down from 6.0 to 5e-4
    assert set(phases["method"]) >= {"memorization_step", "grokking_step", "cleanup_end_step"}
    assert summary["classification"]["label"] == "clock"
    assert summary["skipped"] == result.skipped


def test_measures_csv_round_trip(result):
    text = measures_csv(result.table)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(TABLE) and len(rows) == 1 + len(TABLE["step"])
    parsed = {name: [row[i] for row in rows[1:]] for i, name in enumerate(rows[0])}
    assert [int(s) for s in parsed["step"]] == TABLE["step"]
    for name, values in TABLE.items():
        for cell, value in zip(parsed[name], values):
            if math.isnan(value):
                assert cell == ""
            else:
                assert float(cell) == value  # exact: floats are written with repr
    assert measures_csv({"step": []}) == "step\n"


def test_format_table_mentions_the_essentials(result):
    text = format_table(summary_dict(result))
    lines = text.splitlines()
    assert lines[0].startswith("task") and "p = 23" in lines[0] and "add" in lines[0] and "runs/p23" in lines[0]
    assert any(line.startswith("checkpoints") and "8" in line and "0..2000" in line and "1 skipped" in line
               for line in lines)
    assert any(line.startswith("key freqs") and "[4, 9]" in line and "rule A" in line for line in lines)
    phases = next(line for line in lines if line.startswith("phases"))
    assert "memorisation 100" in phases and "grokking 1000" in phases and "delay 10x" in phases
    assert "cleanup end 1.5e+03" in phases or "cleanup end 1500" in phases
    assert any(line.startswith("label") and "clock" in line for line in lines)
    assert any(line.startswith("skipped") and "step_0000300" in line for line in lines)


def test_format_table_of_nothing_detected(result):
    summary = summary_dict(result)
    summary["phases"] = {name: None for name in summary["phases"]}
    summary["classification"], summary["skipped"] = None, []
    text = format_table(summary)
    assert "memorisation -, grokking -" in text and "label        -" in text and "skipped" not in text


def test_collection_summary_table_and_csv(result):
    one = summary_dict(result)
    summary = collection_summary([result, result], "models", "collection", [{"path": "models/x.pt", "error": "bad"}])
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    assert summary["models"] == [one, one]
    assert [s["path"] for s in summary["skipped"]] == ["models/x.pt"] + [s["path"] for s in result.skipped] * 2
    rows = list(csv.DictReader(io.StringIO(collection_csv(summary["models"]))))
    assert len(rows) == 2 and rows[0]["label"] == "clock" and rows[0]["key_frequencies"] == "4 9"
    assert float(rows[0]["accuracy"]) == 1.0 and rows[0]["excluded_loss"] == ""
    text = format_table(summary)
    assert text.splitlines()[0] == "2 models in models" and text.count("clock") == 2


def test_default_out_dir(tmp_path):
    folder = tmp_path / "runs" / "p113"
    folder.mkdir(parents=True)
    assert default_out_dir(folder) == folder / "grokscope"
    assert default_out_dir(str(folder)) == folder / "grokscope"
    model = tmp_path / "models" / "model_p99zdpze5l.pt"
    model.parent.mkdir()
    model.write_bytes(b"")
    assert default_out_dir(model) == tmp_path / "models" / "grokscope" / "model_p99zdpze5l"
    assert isinstance(default_out_dir(str(model)), Path)
