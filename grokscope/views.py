"""Plain-data views of one model for figures and reports: Fourier norms, neuron clusters, circles.

Everything here is computed from one forward pass over the grid and returned as numpy arrays and
small dicts, so a report can be drawn after the model is gone.

>>> from grokscope.tasks import Task
>>> from grokscope.constructions import exact_clock_model
>>> view = model_views(exact_clock_model(Task(p=23), [4, 9]), Task(p=23), key_freqs=[4, 9])
>>> sorted(view)
['basis', 'circles', 'embedding_norms', 'frac_explained', 'key_freqs', 'logit_grid', 'neuron_freq']
>>> [int(k) for k in view["embedding_norms"].argsort()[-2:] + 1]
[9, 4]
"""

from collections.abc import Sequence
from typing import Any

import torch

from grokscope.fourier import embedding_norms, group_activations, group_embeddings, neuron_frequencies
from grokscope.models import HookedTransformer, final_logits
from grokscope.circles import circle_coordinates, find_circles
from grokscope.algorithm_signatures import distance_matrix
from grokscope.tasks import Task


def model_views(model: HookedTransformer, task: Task, *, key_freqs: Sequence[int] = (),
                circle_labels: dict[int, str] | None = None, n_circles: int = 3) -> dict[str, Any]:
    """The data behind the per-model figures of a report.

    Everything is in the task's group (``Task.group``: Z_p, or Z_{p-1} in discrete-log order, whose
    name is under ``basis``); operations without a group get None for every Fourier view.

    Returns a dict with ``embedding_norms`` (per frequency k = 1..floor(N/2)), ``key_freqs``,
    ``neuron_freq`` and ``frac_explained`` (per neuron, [N23] section 5), ``circles`` (the first
    ``n_circles`` circles of the operand-a embeddings, [Z23]: each ``{k, delta, points (p, 2) along
    the ellipse's axes, labels}``) and ``logit_grid`` (the correct-logit map M[(a+b) mod p, (a-b) mod p], or None for
    operations other than addition).
    """
    group = task.group
    if group is None:
        return {"embedding_norms": None, "key_freqs": [int(k) for k in key_freqs], "neuron_freq": None,
                "frac_explained": None, "circles": [], "logit_grid": None, "basis": None}
    with torch.no_grad():
        logits, post = final_logits(model, task.tokens(), return_post=True)
        neurons = neuron_frequencies(group_activations(post, task), group.N)
        rows = group_embeddings(model, task).detach()
        circles = []
        for circle in find_circles(rows, n_circles=n_circles):
            circles.append({"k": circle.freq, "delta": circle.delta,
                            "points": circle_coordinates(rows, circle.freq).numpy(),
                            "labels": group.elements().tolist(),
                            "label": (circle_labels or {}).get(circle.index)})
        grid = distance_matrix(logits, task).numpy()
    return {"embedding_norms": embedding_norms(model, task).detach().numpy(), "basis": group.name,
            "key_freqs": [int(k) for k in key_freqs],
            "neuron_freq": None if neurons is None else neurons.freq.numpy(),
            "frac_explained": None if neurons is None else neurons.frac_explained.numpy(),
            "circles": circles, "logit_grid": grid}
