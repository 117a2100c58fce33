"""The progress bars of training and analysis: ``tqdm.auto``, so a notebook gets a widget and a
terminal gets a text bar on stderr.

A bar draws only when enabled and worth drawing: on a terminal, or in a notebook with ipywidgets.
Logs, pipes and tests (stderr not a terminal) stay clean, and ``enabled=False`` (``--quiet`` on the
command line) silences it everywhere. The counts are tqdm's: ``bar.update(k)`` moves by ``k``,
``bar.set_postfix({name: value})`` shows the latest figures (numbers to 3 significant digits).

>>> import io
>>> with progress_bar(100, desc="train", file=io.StringIO()) as bar:   # not a terminal: silent
...     bar.update(50)
...     bar.set_postfix({"train_loss": 0.5})
>>> bar.disable
True
"""

from typing import TextIO

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(total: int, *, desc: str = "", initial: int = 0, enabled: bool | None = True,
                 unit: str = "it", file: TextIO | None = None) -> tqdm:
    """A tqdm bar from ``initial`` to ``total``, drawn only where someone can see it.

    Args:
        total: the count that means done (epochs, checkpoints...).
        desc: a short label in front of the bar.
        initial: where the count starts (a resumed run starts part-way).
        enabled: False silences the bar; True or None draw on a terminal or in a notebook.
        unit: the name of one count, shown in the rate ("epoch/s").
        file: where a text bar goes (stderr by default).

    >>> progress_bar(10, enabled=False).disable
    True
    """
    # disable=None is tqdm's "only on a terminal"; its notebook bar turns None into drawn.
    return tqdm(total=max(int(total), 0), desc=desc or None, initial=int(initial), unit=unit, file=file,
                disable=None if enabled is not False else True, dynamic_ncols=True, mininterval=0.2,
                smoothing=0.1)
