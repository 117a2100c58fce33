"""Reading checkpoint files without running code from them.

Most checkpoints in the wild are pickles, and unpickling can run arbitrary code. grokscope loads them
with ``torch.load(weights_only=True)``, which rebuilds only tensors, containers and plain values, plus
an explicit allow-list of data classes (``CONFIG_GLOBALS``: TransformerLens's HookedTransformerConfig
under its 3.x and former module paths, and the numpy scalar, dtype and array constructors its
fields use). TransformerLens 4.x no longer has that class: there the same names load as
``backend.PickledConfig``, a plain holder of the pickled fields. A file that needs any other global is refused with a message naming the file and the
global; ``trust_pickle=True`` (the CLI's ``--trust-pickle``) loads it fully, for files the user trusts.
Safetensors files are read with safetensors (no code at all).

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
>>> torch.save({"W": torch.ones(2)}, path)
>>> load_checkpoint(path)["W"].tolist()
[1.0, 1.0]
"""

import json
import os
import pickle
import re
import struct
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from grokscope import backend
from grokscope.errors import GrokscopeError
from grokscope.limits import check_safetensors_size

TRUST_HINT = "--trust-pickle (trust_pickle=True) loads it fully, which can run code: only for files you trust"


def _numpy_globals() -> list[tuple[Callable, str]]:
    core = getattr(np, "_core", None) or np.core
    scalar, reconstruct = core.multiarray.scalar, core.multiarray._reconstruct
    pairs = [(np.dtype, "numpy.dtype"), (np.ndarray, "numpy.ndarray")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        pairs += [(scalar, f"{module}.scalar"), (reconstruct, f"{module}._reconstruct")]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        dtype_class = getattr(getattr(np, "dtypes", None), name, None)
        if dtype_class is not None:
            pairs.append((dtype_class, f"numpy.dtypes.{name}"))
    return pairs


CONFIG_GLOBALS: tuple = (
    *backend.PICKLED_CONFIG_GLOBALS,  # on TransformerLens 4.x a plain stand-in: the class is gone there
    *_numpy_globals(),
)
"""Globals a checkpoint may use beyond torch's weights-only defaults: data classes only, no code."""

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".safetensors")
"""File name endings grokscope treats as checkpoints when scanning a folder."""

_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")


def sniff(path: str) -> str:
    """The container of a file from its first bytes: "zip" (torch.save), "pickle" (a legacy torch.save
    or a plain pickle), "safetensors", "empty" or "unknown"."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    size = os.path.getsize(path)
    if not head:
        return "empty"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 10:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def _not_a_checkpoint(path: str, kind: str) -> GrokscopeError:
    if kind == "empty":
        return GrokscopeError("an empty file", expected="a PyTorch or safetensors checkpoint", where=path)
    with open(path, "rb") as handle:
        head = handle.read(12)
    return GrokscopeError(f"a file that is not a checkpoint (it starts with {head!r})",
                          expected="a PyTorch checkpoint (.pt/.pth, zip or pickle) or a .safetensors file",
                          where=path)


def _corrupt(path: str, error: BaseException) -> GrokscopeError:
    text = str(error).strip()
    detail = re.split(r"(?<=[a-z])\. ", text.splitlines()[0])[0][:160] if text else type(error).__name__
    return GrokscopeError(f"a truncated or corrupt checkpoint ({detail})",
                          expected="a complete PyTorch or safetensors file", where=path)


def _is_real_global(name: str) -> bool:
    """False for a global name that cannot exist (a file cut inside a name): judged only from modules
    already imported, so nothing is imported on a file's say-so."""
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", name):
        return False
    if name in backend.PICKLED_CONFIG_NAMES:  # real classes of other TransformerLens versions
        return True
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is not None:
            target: Any = module
            for attribute in parts[cut:]:
                try:
                    target = getattr(target, attribute)
                except AttributeError:
                    return False
                except Exception:  # noqa: BLE001 - e.g. TransformerLens 4.x's ImportError for removed names
                    return True
            return True
    return True


def _refusal(path: str, error: BaseException, kind: str) -> GrokscopeError | None:
    message = str(error)
    if "Weights only load failed" not in message and "WeightsUnpickler" not in message:
        return None
    refused = _REFUSED_GLOBAL.search(message)
    if refused:
        name = refused.group(1)
        if not _is_real_global(name):
            return None
        names = [name]
        if kind == "zip":
            try:
                names = torch.serialization.get_unsafe_globals_in_checkpoint(path) or names
            except Exception:  # noqa: BLE001 - the first refused name is enough
                pass
        return GrokscopeError(f"a pickle that needs the global {', '.join(names[:4])} to load, which weights-only "
                              "loading refuses (it could run code)",
                              expected=f"a checkpoint of tensors and plain values; {TRUST_HINT}", where=path)
    if kind == "pickle" and "Unsupported operand" in message:
        return GrokscopeError("a pickle that is not a torch.save file (weights-only loading cannot read it)",
                              expected=f"a PyTorch checkpoint; {TRUST_HINT}", where=path)
    return None


def load_pickle(path: str, *, trust_pickle: bool = False, allowed_globals: Sequence = (),
                mmap: bool = True) -> Any:
    """Load a ``torch.save`` file with ``weights_only=True`` and ``map_location="cpu"``.

    Args:
        path: the file.
        trust_pickle: load fully (``weights_only=False``), running whatever the pickle asks; for files
            the user trusts. A plain (non-torch) pickle is then read with ``pickle.load``.
        allowed_globals: extra classes allowed in weights-only mode, as ``torch.serialization.safe_globals``
            takes them (a class, or ``(class, "module.Name")`` for a former path).
        mmap: map zip checkpoints' tensors from the file instead of reading them (cheap to open).

    Raises:
        GrokscopeError: the file is missing, empty, not a checkpoint, truncated or corrupt, or needs a
            global outside the allow-list (naming it, and saying ``--trust-pickle`` allows it).
    """
    if not os.path.isfile(path):
        raise GrokscopeError("no such file", expected="a checkpoint file", where=path)
    kind = sniff(path)
    if kind not in ("zip", "pickle"):
        raise _not_a_checkpoint(path, kind)
    use_mmap = mmap and kind == "zip"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if trust_pickle:
                return _load_trusted(path, kind, use_mmap)
            with torch.serialization.safe_globals(list(allowed_globals)):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except GrokscopeError:
        raise
    except Exception as error:  # noqa: BLE001 - every failure becomes one message naming the file
        refusal = _refusal(path, error, kind)
        raise (refusal or _corrupt(path, error)) from None


def _load_trusted(path: str, kind: str, use_mmap: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=use_mmap)
    except Exception:
        if kind != "pickle":
            raise
        with open(path, "rb") as handle:
            return pickle.load(handle)  # noqa: S301 - the user trusts this file


def load_safetensors(path: str) -> dict[str, Tensor]:
    """All tensors of a safetensors file, on CPU."""
    from safetensors.torch import load_file

    check_safetensors_size(path)  # before any tensor is read
    try:
        return load_file(path, device="cpu")
    except Exception as error:  # noqa: BLE001
        raise _corrupt(path, error) from None


def _safetensors_header(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except Exception as error:  # noqa: BLE001
        raise _corrupt(path, error) from None
    if 8 + length + end > os.path.getsize(path):
        raise _corrupt(path, ValueError(f"the header promises {8 + length + end} bytes, "
                                        f"the file has {os.path.getsize(path)}"))
    return header


def safetensors_metadata(path: str) -> dict[str, str]:
    """The string metadata of a safetensors file's header (empty when there is none)."""
    return dict(_safetensors_header(path).get("__metadata__") or {})


def safetensors_shapes(path: str) -> dict[str, Tensor]:
    """The tensors of a safetensors file as empty "meta" tensors of the right shapes: its header only,
    so a folder of checkpoints can be checked without reading their weights."""
    header = _safetensors_header(path)
    check_safetensors_size(path)  # a consumer of the shapes would allocate them
    return {name: torch.empty(info["shape"], device="meta") for name, info in header.items()
            if name != "__metadata__"}


def load_checkpoint(path: str, *, trust_pickle: bool = False) -> Any:
    """A checkpoint file's content: a dict of tensors for safetensors, the unpickled object otherwise
    (weights-only, with ``CONFIG_GLOBALS`` allowed, unless ``trust_pickle``)."""
    if not os.path.isfile(path):
        raise GrokscopeError("no such file", expected="a checkpoint file", where=path)
    kind = sniff(path)
    if kind == "safetensors":
        return load_safetensors(path)
    if path.endswith(".safetensors") and kind in ("empty", "unknown"):
        raise _corrupt(path, ValueError("no safetensors header"))
    return load_pickle(path, trust_pickle=trust_pickle, allowed_globals=CONFIG_GLOBALS)
