"""Weights-only loading: tensors and allow-listed data classes load; anything that could run code is
refused unless trusted; broken files are reported as such, naming the file."""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from formats_writers import TL3_CONFIG_MODULE, OpensAFile, hooked_config, pickled_config_class
from safetensors.torch import save_file

from grokscope import backend
from grokscope.errors import GrokscopeError
from grokscope.formats import safe_load
from grokscope.models import build_model, nanda_config
from grokscope.tasks import Task


def test_state_dict_loads_weights_only(tmp_path):
    state = {"embed.W_E": torch.arange(6.0).reshape(3, 2), "steps": [1, 2], "name": "x", "rate": 0.5}
    torch.save(state, tmp_path / "w.pt")
    loaded = safe_load.load_pickle(str(tmp_path / "w.pt"))
    assert torch.equal(loaded["embed.W_E"], state["embed.W_E"])
    assert (loaded["steps"], loaded["name"], loaded["rate"]) == ([1, 2], "x", 0.5)


@pytest.mark.parametrize("module", [TL3_CONFIG_MODULE, "transformer_lens.HookedTransformerConfig"])
def test_config_class_needs_the_allow_list(tmp_path, module):
    """A HookedTransformerConfig pickled by TransformerLens 3.x (or 1.x/2.x) loads on either line, without
    its code; without the allow-list it is refused by name (4.x lacks both paths)."""
    model = build_model(nanda_config(Task(p=23), d_model=16, n_heads=2, seed=3))
    path = str(tmp_path / "bundle.pth")
    with pickled_config_class(module):
        torch.save({"config": hooked_config(model, module, seed=3), "model": {"W": torch.ones(2)}}, path)
    with pytest.raises(GrokscopeError) as refused:
        safe_load.load_pickle(path)
    assert "HookedTransformerConfig" in str(refused.value) and "--trust-pickle" in str(refused.value)
    loaded = safe_load.load_pickle(path, allowed_globals=safe_load.CONFIG_GLOBALS)
    assert isinstance(loaded["config"], backend.CONFIG_CLASSES)
    assert (loaded["config"].d_vocab, loaded["config"].d_model, loaded["config"].seed) == (24, 16, 3)
    assert isinstance(safe_load.load_checkpoint(path)["config"], backend.CONFIG_CLASSES)
    if backend.LINE == 4:  # the stand-in holds the fields and nothing else
        assert type(loaded["config"]) is backend.PickledConfig
        assert loaded["config"].to_dict()["act_fn"] == "relu"


def test_numpy_values_are_allowed(tmp_path):
    torch.save({"loss": np.float64(1.5e-7), "curve": np.arange(4.0)}, tmp_path / "np.pt")
    loaded = safe_load.load_checkpoint(str(tmp_path / "np.pt"))
    assert float(loaded["loss"]) == 1.5e-7 and loaded["curve"].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("legacy", [False, True])
def test_code_running_pickle_is_refused_unless_trusted(tmp_path, legacy):
    marker = tmp_path / "code_ran"
    path = str(tmp_path / "payload.pt")
    torch.save({"W": torch.ones(2), "payload": OpensAFile(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(GrokscopeError) as refused:
        safe_load.load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(path) and "open" in message and "--trust-pickle" in message
    assert not marker.exists()  # nothing ran
    loaded = safe_load.load_checkpoint(path, trust_pickle=True)
    loaded["payload"].close()
    assert marker.exists() and torch.equal(loaded["W"], torch.ones(2))  # trusted: loaded fully


def test_plain_pickle_needs_trust(tmp_path):
    path = str(tmp_path / "plain.pkl")
    with open(path, "wb") as handle:
        pickle.dump({"W": [1.0, 2.0]}, handle, protocol=4)
    with pytest.raises(GrokscopeError, match="not a torch.save file.*--trust-pickle"):
        safe_load.load_checkpoint(path)
    assert safe_load.load_checkpoint(path, trust_pickle=True) == {"W": [1.0, 2.0]}


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_checkpoint(tmp_path, legacy, keep):
    path = str(tmp_path / "cut.pt")
    torch.save({"collections": {"a": torch.randn(50)}, "b": torch.randn(50)}, path,
               _use_new_zipfile_serialization=not legacy)
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[: int(len(data) * keep)])
    with pytest.raises(GrokscopeError) as error:
        safe_load.load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: found a truncated or corrupt checkpoint")


def test_truncated_legacy_pickle_inside_a_global_name_is_corrupt(tmp_path):
    """A legacy file cut inside "collections.OrderedDict" asks for "collections.Ordere": corrupt, not unsafe."""
    path = str(tmp_path / "cut.pt")
    torch.save({"W": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    data = open(path, "rb").read()
    cut = data.index(b"OrderedDict") + 6
    with open(path, "wb") as handle:
        handle.write(data[:cut])
    with pytest.raises(GrokscopeError, match="truncated or corrupt"):
        safe_load.load_checkpoint(path)


@pytest.mark.parametrize("content,found", [(b"", "an empty file"), (b"step,loss\n0,4.7\n", "not a checkpoint"),
                                           (bytes(range(7, 200)), "not a checkpoint")])
def test_not_a_checkpoint(tmp_path, content, found):
    path = str(tmp_path / "x.pt")
    with open(path, "wb") as handle:
        handle.write(content)
    with pytest.raises(GrokscopeError, match=found) as error:
        safe_load.load_checkpoint(path)
    assert str(error.value).startswith(path) and "expected" in str(error.value)


def test_safetensors(tmp_path):
    path = str(tmp_path / "w.safetensors")
    save_file({"embed.W_E": torch.randn(24, 8), "unembed.W_U": torch.randn(8, 23)}, path, metadata={"config": "{}"})
    assert safe_load.sniff(path) == "safetensors"
    loaded = safe_load.load_checkpoint(path)
    assert loaded["embed.W_E"].shape == (24, 8)
    shapes = safe_load.safetensors_shapes(path)
    assert {k: tuple(v.shape) for k, v in shapes.items()} == {"embed.W_E": (24, 8), "unembed.W_U": (8, 23)}
    assert all(v.device.type == "meta" for v in shapes.values())
    assert safe_load.safetensors_metadata(path) == {"config": "{}"}
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(data[:-40])
    for read in (safe_load.load_checkpoint, safe_load.safetensors_shapes):
        with pytest.raises(GrokscopeError, match="truncated or corrupt"):
            read(path)


def test_missing_file():
    with pytest.raises(GrokscopeError, match="no such file"):
        safe_load.load_checkpoint(os.path.join("nowhere", "x.pt"))


def test_global_names_of_unknown_modules_are_refused_not_imported(tmp_path, monkeypatch):
    """A class from a module grokscope cannot know is refused by name; the module is not imported."""
    module = types.ModuleType("someones_training_code")

    class Config:
        pass

    Config.__module__, Config.__qualname__ = module.__name__, "Config"
    module.Config = Config
    monkeypatch.setitem(sys.modules, module.__name__, module)
    path = str(tmp_path / "cfg.pt")
    torch.save({"config": Config()}, path)
    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.raises(GrokscopeError, match="someones_training_code.Config"):
        safe_load.load_checkpoint(path)
    assert module.__name__ not in sys.modules
