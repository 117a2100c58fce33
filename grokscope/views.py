"""Plain-data views of one model for figures and reports: Fourier norms, neuron clusters, circles.

Everything here is computed from one forward pass over the grid and returned as numpy arrays and
small dicts, so a report can be drawn after the model is gone.

>>> from grokscope.tasks import Task
>>> from grokscope.constructions import exact_clock_model
>>> view = model_views(exact_clock_model(Task(p=23), [4, 9]), Task(p=23), key_freqs=[4, 9])
>>> sorted(view)
['circles', 'embedding_norms', 'frac_explained', 'key_freqs', 'logit_grid', 'neuron_freq']
>>> [int(k) for k in view["embedding_norms"].argsort()[-2:] + 1]
[9, 4]
"""

from collections.abc import Sequence
from typing import Any

import torch

from grokscope.fourier import embedding_norms, neuron_frequencies
from grokscope.models import HookedTransformer, final_logits
from grokscope.circles import circle_coordinates, find_circles
from grokscope.algorithm_signatures import distance_matrix
from grokscope.tasks import Task


def model_views(model: HookedTransformer, task: Task, *, key_freqs: Sequence[int] = (),
                circle_labels: dict[int, str] | None = None, n_circles: int = 3) -> dict[str, Any]:
    """The data behind the per-model figures of a report.

    Returns a dict with ``embedding_norms`` (per frequency k = 1..(p-1)/2), ``key_freqs``,
    ``neuron_freq`` and ``frac_explained`` (per neuron, [N23] section 5), ``circles`` (the first
    ``n_circles`` circles of the operand-a embeddings, [Z23]: each ``{k, delta, points (p, 2) along
    the ellipse's axes, labels}``) and ``logit_grid`` (the correct-logit map M[(a+b) mod p, (a-b) mod p], or None for
    operations other than addition).
    """
    with torch.no_grad():
        logits, post = final_logits(model, task.tokens(), return_post=True)
        neurons = neuron_frequencies(post, task.p) if task.is_square_grid else None
        rows = model.W_E[: task.p].detach()
        circles = []
        for circle in find_circles(rows, n_circles=n_circles):
            circles.append({"k": circle.freq, "delta": circle.delta,
                            "points": circle_coordinates(rows, circle.freq).numpy(),
                            "labels": list(range(task.p)),
                            "label": (circle_labels or {}).get(circle.index)})
        grid = distance_matrix(logits, task).numpy() if task.op == "add" else None
    return {"embedding_norms": embedding_norms(model, task).detach().numpy(),
            "key_freqs": [int(k) for k in key_freqs],
            "neuron_freq": None if neurons is None else neurons.freq.numpy(),
            "frac_explained": None if neurons is None else neurons.frac_explained.numpy(),
            "circles": circles, "logit_grid": grid}
