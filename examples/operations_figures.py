"""Figures of docs/operations.md: the curves and final-checkpoint views of a run of sub or mul.

    grokscope analyze runs/sub59 --out runs/sub59/grokscope
    python examples/operations_figures.py runs/sub59 docs/img/ops_sub59

Reads what `grokscope analyze` wrote (measures.csv, summary.json) and the run's final checkpoint, and
writes PNG files PREFIX_<figure>.png (plotly + kaleido). Every view is in the task's group: for mul
the embedding norms are over the frequencies of Z_{p-1} in discrete-log coordinates, the circles
are drawn with the tokens in the order g^0, g^1, ... and the logit map is over (u + v, u - v).
"""

import csv
import json
import sys
from pathlib import Path

import grokscope as gs
from grokscope import plots
from grokscope.fourier import component_norms, fourier_basis, frequency_norms, token_embeddings
from grokscope.measures import gini
from grokscope.views import model_views


def read_table(path: Path) -> dict[str, list]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {name: [float(r[name]) if r[name] != "" else float("nan") for r in rows] for name in rows[0]}


def main(run_dir: str, prefix: str) -> int:
    run_path, out = Path(run_dir), Path(prefix)
    table = read_table(run_path / "grokscope" / "measures.csv")
    summary = json.loads((run_path / "grokscope" / "summary.json").read_text())
    run = gs.load_run(run_path)
    labels = {c["index"]: c["label"] for c in (summary["classification"] or {}).get("circles", [])}
    view = model_views(run.model(-1), run.task, key_freqs=summary["key_frequencies"]["freqs"],
                       circle_labels=labels)
    basis = view["basis"]
    figures = {
        "loss": plots.loss_curves(table, summary["phases"]),
        "restricted_excluded": plots.restricted_excluded_curves(
            table, summary["phases"], title=f"Restricted and excluded loss ({basis})"),
        "embedding_norms": plots.fourier_norms(view["embedding_norms"], view["key_freqs"],
                                               title=f"Embedding Fourier norms ({basis})"),
        "circles": plots.embedding_circles(view["circles"], title=f"Embedding circles ({basis})"),
    }
    if run.task.group.generator is not None:
        # The same embedding in the additive basis of Z_p, where a discrete-log model looks dense.
        additive = fourier_basis(run.task.p)
        norms = component_norms(token_embeddings(run.model(-1), run.task), additive)
        print(f"Gini of W_E: {gini(norms[additive.nonconstant_rows()]):.3f} in Z_{run.task.p} (additive), "
              f"{table['gini_W_E'][-1]:.3f} in {basis}")
        figures["embedding_norms_additive"] = plots.fourier_norms(
            frequency_norms(norms, additive), title=f"Embedding Fourier norms (Z_{run.task.p}, additive)")
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, figure in figures.items():
        figure.write_image(f"{out}_{name}.png", width=900, height=450 if name != "circles" else 350)
        print(f"{out}_{name}.png")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
