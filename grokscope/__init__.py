"""grokscope: train, load and interpret grokking modular-arithmetic transformers.

>>> import grokscope as gs
>>> gs.Task(p=23).n_inputs
529

Heavy modules (torch, TransformerLens) load on first use of the names that need them.
"""

import importlib
import sys
import types

__version__ = "0.1.0"

_LAZY = {
    "GrokscopeError": "grokscope.errors",
    "Task": "grokscope.tasks",
    "OPERATIONS": "grokscope.tasks",
    "nanda_config": "grokscope.models",
    "pizza_config": "grokscope.models",
    "build_model": "grokscope.models",
    "set_attention_rate": "grokscope.models",
    "final_logits": "grokscope.models",
    "TrainConfig": "grokscope.train",
    "train": "grokscope.train",
    "PRESETS": "grokscope.train",
    "load_run": "grokscope.formats",
    "load_runs": "grokscope.formats",
    "detect": "grokscope.formats",
    "Run": "grokscope.formats",
    "fourier_basis": "grokscope.fourier",
    "key_frequencies": "grokscope.fourier",
    "progress_measures": "grokscope.measures",
    "classify": "grokscope.classify",
    "Classification": "grokscope.classify",
    "Thresholds": "grokscope.classify",
    "signatures": "grokscope.signatures",
    "find_phases": "grokscope.phases",
    "analyze": "grokscope.analyze",
    "exact_clock_model": "grokscope.constructions",
    "exact_pizza_model": "grokscope.constructions",
    "random_model": "grokscope.constructions",
    "analyze_path": "grokscope.outputs",
    "AnalysisResult": "grokscope.analyze",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'grokscope' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)


# Four public functions share their module's name (gs.train, gs.analyze, gs.classify, and
# gs.signatures). Importing a submodule normally rebinds the package attribute to the module, which
# would hide the function; this keeps the function bound instead. The modules stay importable with
# `from grokscope.classify import ...` and `importlib.import_module("grokscope.classify")`.
_FUNCTIONS_NAMED_LIKE_MODULES = {"train", "analyze", "classify", "signatures"}


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        if name in _FUNCTIONS_NAMED_LIKE_MODULES and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
