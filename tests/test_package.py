"""The package namespace: public functions stay functions whatever submodules get imported."""

import importlib
import inspect

import grokscope as gs


def test_public_functions_stay_functions_after_importing_every_module():
    for module in ("training", "analysis", "classifier", "algorithm_signatures", "measures", "fourier"):
        importlib.import_module(f"grokscope.{module}")
    for name in ("train", "analyze", "classify", "signatures", "key_frequencies", "progress_measures"):
        assert inspect.isfunction(getattr(gs, name)), name


def test_no_module_is_named_like_a_public_function():
    import pkgutil

    modules = {info.name for info in pkgutil.iter_modules(gs.__path__)}
    functions = {name for name in gs.__all__ if inspect.isfunction(getattr(gs, name))}
    assert not modules & functions, modules & functions
