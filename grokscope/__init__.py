"""grokscope: train, load and interpret grokking modular-arithmetic transformers.

>>> import grokscope as gs
>>> gs.Task(p=23).n_inputs
529

Heavy modules (torch, TransformerLens) load on first use of the names that need them.
"""

import importlib

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
    "TrainConfig": "grokscope.training",
    "train": "grokscope.training",
    "PRESETS": "grokscope.training",
    "train_members": "grokscope.training",
    "sweep": "grokscope.sweep_runner",
    "load_run": "grokscope.formats",
    "load_runs": "grokscope.formats",
    "detect": "grokscope.formats",
    "Run": "grokscope.formats",
    "Group": "grokscope.tasks",
    "fourier_basis": "grokscope.fourier",
    "task_basis": "grokscope.fourier",
    "key_frequencies": "grokscope.fourier",
    "progress_measures": "grokscope.measures",
    "classify": "grokscope.classifier",
    "Classification": "grokscope.classifier",
    "Thresholds": "grokscope.classifier",
    "signatures": "grokscope.algorithm_signatures",
    "find_phases": "grokscope.phases",
    "train_only_measures": "grokscope.monitor",
    "TrainOnlyMonitor": "grokscope.monitor",
    "detect_phases": "grokscope.monitor",
    "analyze": "grokscope.analysis",
    "exact_clock_model": "grokscope.constructions",
    "exact_pizza_model": "grokscope.constructions",
    "random_model": "grokscope.constructions",
    "analyze_path": "grokscope.outputs",
    "AnalysisResult": "grokscope.analysis",
    "load_sweep": "grokscope.population_analysis",
    "analyze_population": "grokscope.population_analysis",
    "Population": "grokscope.population",
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
