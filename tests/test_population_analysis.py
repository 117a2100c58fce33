"""`grokscope analyze` on sweep folders and folders of runs: population.csv, summary.json, report.html,
gs.load_sweep, parallel workers, bad input, and memory that stays flat in the number of members."""

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import grokscope as gs
from grokscope.cli import main
from grokscope.errors import GrokscopeError
from grokscope.population_analysis import MEASURES, analyze_population, read_population_csv
from grokscope.training import TrainConfig, first_step_at

sys.path.insert(0, str(Path(__file__).parent))
from sweep_folders import copy_members, make_sweep, member_id  # noqa: E402

AXES = ["alpha", "d_model"]


def _base() -> TrainConfig:
    return TrainConfig.preset("fast", p=23, d_model=32, frac=0.6, eq_token=False, epochs=120, checkpoint_every=60,
                              log_every=10)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Four finished members (alpha 0 / 1 x seeds 0 / 1) and one pending member."""
    root = tmp_path_factory.mktemp("sweep") / "alpha"
    configs = [_base().replace(alpha=a, seed=s) for a in (0.0, 1.0) for s in (0, 1)]
    make_sweep(root, configs, AXES, pending=[_base().replace(alpha=0.5)])
    return root


@pytest.fixture(scope="module")
def analysed(sweep_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysed")
    population, out_dir = analyze_population(sweep_dir, out)
    return population, out_dir


def test_population_csv_rows_are_each_members_own_measurements(sweep_dir, analysed):
    population, out_dir = analysed
    rows = read_population_csv(out_dir / "population.csv")
    with open(out_dir / "population.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header[:4] == ["id", "path", "alpha", "d_model"] and header[-len(MEASURES):] == list(MEASURES)
    assert len(rows) == 4
    for row in rows:
        run = gs.load_run(sweep_dir / row["path"])
        config = TrainConfig.from_dict(run.config["train_config"])
        assert row["id"] == member_id(config, AXES) and row["status"] == "finished"
        assert (row["alpha"], row["d_model"], row["seed"], row["frac"]) == (config.alpha, 32, config.seed, 0.6)
        assert row["final_step"] == 120
        assert row["memorization_step"] == first_step_at(run.log, "train_acc")
        assert row["grokking_step"] == first_step_at(run.log, "test_acc")
        # the same model measured in the same process: the table holds exactly the classifier's values
        c = gs.classify(run.model(-1), run.task)
        s = c.signatures
        assert row["gradient_symmetricity"] == pytest.approx(s.gradient_symmetricity, abs=1e-12)
        assert row["distance_irrelevance"] == pytest.approx(s.di_correct, abs=1e-12)
        assert row["distance_irrelevance_runnerup"] == pytest.approx(s.di_runnerup, abs=1e-12)
        assert row["circularity"] == pytest.approx(s.circularity, abs=1e-12)
        assert row["spectral_circularity"] == pytest.approx(s.spectral_circularity, abs=1e-12)
        assert (row["label"], row["reason"]) == (c.label, c.reason)
        circles = [label for _, _, label in c.circle_labels]
        assert [row[f"circles_{k}"] for k in ("clock", "pizza", "accompanying", "mixed", "unexplained")] == \
            [circles.count(k) for k in ("clock", "pizza", "accompanying", "mixed", "unexplained")]
        assert row["accuracy"] == pytest.approx(s.accuracy, abs=1e-12)
        assert row["train_acc"] == pytest.approx(run.log["train_acc"][-1], abs=1e-6)  # log.csv keeps ~7 digits


def test_summary_fractions_are_the_counts_of_the_table(analysed):
    population, out_dir = analysed
    summary = json.loads((out_dir / "summary.json").read_text())
    rows = read_population_csv(out_dir / "population.csv")
    labels = [r["label"] for r in rows]
    assert summary["labels"]["counts"] == {k: labels.count(k) for k in ("clock", "pizza", "uninterpreted")}
    assert summary["members"] == 5 and summary["analysed"] == 4
    assert summary["axes"] == AXES and summary["phase_axes"] == ["alpha"]  # d_model is not varied
    by_alpha = {c["alpha"]: c for c in summary["by_axis"]["alpha"]}
    for alpha in (0.0, 1.0):
        cell_rows = [r for r in rows if r["alpha"] == alpha]
        assert by_alpha[alpha]["n"] == len(cell_rows) == 2
        gs_values = sorted(r["gradient_symmetricity"] for r in cell_rows)
        assert by_alpha[alpha]["median_gradient_symmetricity"] == pytest.approx(sum(gs_values) / 2, abs=1e-12)
    assert [s["path"] for s in summary["skipped"]] == ["runs/alpha0.5-d_model32-s0"]


def test_report_holds_the_phase_diagrams_and_every_member(analysed):
    population, out_dir = analysed
    page = (out_dir / "report.html").read_text()
    for title in ("pizza share of clock + pizza", "median gradient symmetricity", "median distance irrelevance",
                  "GS against DI", "Labels per alpha"):
        assert title in page
    for member in population.ids:
        assert member in page
    assert "<script src=" not in page  # offline: plotly.js is embedded


def test_load_sweep_reads_the_table_back_and_opens_members(sweep_dir, analysed, tmp_path):
    population, _ = analysed
    root = tmp_path / "copy"
    shutil.copytree(sweep_dir, root)
    first = gs.load_sweep(root)  # analyses, writing root/grokscope/
    assert (root / "grokscope" / "population.csv").is_file()
    again = gs.load_sweep(root)  # reads population.csv back
    assert again.ids == first.ids == population.ids and again.axes == AXES
    for a, b in zip(again.rows, population.rows):
        assert a["label"] == b["label"]
        assert a["gradient_symmetricity"] == pytest.approx(b["gradient_symmetricity"], abs=1e-9)
    run = again.run(again.ids[0])
    assert run.steps[-1] == 120 and run.task.p == 23
    assert "Population(4 members" in repr(again)


def test_workers_give_the_same_table(sweep_dir, analysed, tmp_path):
    population, _ = analysed
    parallel, _ = analyze_population(sweep_dir, tmp_path, workers=2, report=False)
    assert parallel.ids == population.ids
    for a, b in zip(parallel.rows, population.rows):
        assert a["label"] == b["label"]
        for name in ("gradient_symmetricity", "distance_irrelevance", "circularity", "loss"):
            # other processes may use other thread counts: equal up to float32 reduction order
            assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6)


def test_cli_on_a_sweep_and_on_a_folder_of_runs(sweep_dir, tmp_path, capsys):
    assert main(["analyze", str(sweep_dir), "--out", str(tmp_path / "a"), "--quiet", "--axes", "alpha", "seed",
                 "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "4 members" in printed and "alpha=0.0, seed=0" in printed
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["phase_axes"] == ["alpha", "seed"]
    folder = tmp_path / "runs"
    folder.mkdir()
    for run in sorted((sweep_dir / "runs").iterdir())[:2]:
        shutil.copytree(run, folder / run.name)
    assert main(["analyze", str(folder), "--population", "--quiet", "--no-report"]) == 0
    rows = read_population_csv(folder / "grokscope" / "population.csv")
    assert sorted(r["id"] for r in rows) == sorted(p.name for p in folder.iterdir() if p.name != "grokscope")
    summary = json.loads((folder / "grokscope" / "summary.json").read_text())
    assert summary["source"]["format"] == "collection"


def test_bad_sweep_folders_are_named(sweep_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "sweep.json").write_text(json.dumps({"format": "something-else"}))
    assert main(["analyze", str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("grokscope: ") and "sweep.json" in err and "something-else" in err
    assert len(err.splitlines()) == 1
    assert main(["analyze", str(sweep_dir), "--out", str(tmp_path / "b"), "--quiet", "--axes", "width"]) == 2
    assert "axis 'width'" in capsys.readouterr().err
    (bad / "sweep.json").write_text("{not json")
    with pytest.raises(GrokscopeError, match="sweep.json"):
        gs.load_sweep(bad)


def test_an_unreadable_member_is_a_row_with_its_error(sweep_dir, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(sweep_dir, root)
    victim = sorted((root / "runs").iterdir())[0]
    for checkpoint in (victim / "checkpoints").iterdir():
        checkpoint.write_bytes(b"not a safetensors file")
    population, out_dir = analyze_population(root, report=False)
    broken = population.row(victim.name)
    assert broken["error"] and broken["label"] is None
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["analysed"] == 3 and victim.name in " ".join(s["path"] for s in summary["skipped"])


_MEMORY_SCRIPT = """
import sys, tracemalloc, torch
torch.set_num_threads(1)
from grokscope.population_analysis import analyze_population
analyze_population(sys.argv[1], sys.argv[2], report=False)  # warm: imports, caches
tracemalloc.start()
analyze_population(sys.argv[1], sys.argv[2], report=False)
print(tracemalloc.get_traced_memory()[1])
"""


@pytest.mark.slow
def test_memory_stays_flat_in_the_number_of_members(sweep_dir, tmp_path):
    peaks = {}
    for n in (10, 40):
        root = tmp_path / f"n{n}"
        copy_members(sweep_dir, root, n)
        result = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(root), str(tmp_path / f"out{n}")],
                                capture_output=True, text=True, check=True)
        peaks[n] = int(result.stdout.strip().splitlines()[-1])
    # one row of ~55 values costs a few kB; a retained model or run costs far more. 30 more members may add
    # their rows (well under 1 MB), never 30 models
    assert peaks[40] - peaks[10] < 1_000_000, peaks
    assert not math.isnan(peaks[40])


def test_step_measures_every_member_at_that_checkpoint(sweep_dir, tmp_path, capsys):
    root = tmp_path / "alpha"
    shutil.copytree(sweep_dir, root)
    assert main(["analyze", str(root), "--step", "60", "--quiet", "--no-report"]) == 0
    assert f"wrote {root / 'grokscope' / 'step_60'}/" in capsys.readouterr().out
    out = root / "grokscope" / "step_60"
    rows = read_population_csv(out / "population.csv")
    assert len(rows) == 4 and json.loads((out / "summary.json").read_text())["step"] == 60
    for row in rows:
        run = gs.load_run(root / row["path"])
        assert row["final_step"] == 60 and run.steps[-1] == 120
        # the log up to step 60 only, as a run stopped there would have written it
        early = {k: [v for s, v in zip(run.log["step"], values) if s <= 60] for k, values in run.log.items()}
        assert row["memorization_step"] == first_step_at(early, "train_acc")
        assert row["grokking_step"] == first_step_at(early, "test_acc")
        s = gs.classify(run.model(run.steps.index(60)), run.task).signatures
        assert row["gradient_symmetricity"] == pytest.approx(s.gradient_symmetricity, abs=1e-12)
        assert row["distance_irrelevance_runnerup"] == pytest.approx(s.di_runnerup, abs=1e-12)
        assert row["accuracy"] == pytest.approx(s.accuracy, abs=1e-12)
    # not the final checkpoint's values (the members still change between steps 60 and 120)
    final = {r["id"]: r for r in analyze_population(root, tmp_path / "final", report=False)[0].rows}
    assert any(abs(r["gradient_symmetricity"] - final[r["id"]]["gradient_symmetricity"]) > 1e-6 for r in rows)
    assert [r["id"] for r in gs.load_sweep(root, step=60).rows] == [r["id"] for r in rows]  # read back


def test_a_step_without_checkpoints_and_bad_steps_are_named(sweep_dir, tmp_path, capsys):
    population, _ = analyze_population(sweep_dir, tmp_path / "s61", step=61, report=False)
    # the message names the step asked for and the steps the member has (its latest ones)
    assert all("no checkpoint at step 61" in r["error"] and "100, 120" in r["error"] for r in population.rows)
    assert population.summary["analysed"] == 0 and len(population.summary["skipped"]) == 5  # 4 + the pending one
    for bad in (-1, True, 1.5):
        with pytest.raises(GrokscopeError, match="step"):
            analyze_population(sweep_dir, tmp_path / "bad", step=bad)
    run = sorted((sweep_dir / "runs").iterdir())[0]
    assert main(["analyze", str(run), "--step", "60", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("grokscope: ") and "--step" in err and len(err.strip().splitlines()) == 1
