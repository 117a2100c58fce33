"""Sweep specifications: a base recipe and axes over TrainConfig fields, expanded into member configs.

A spec is a mapping (from YAML or JSON):

.. code-block:: yaml

    base: pizza                 # a preset (TrainConfig.preset)
    set: {epochs: 3000}         # fixed overrides of the preset
    grid:                       # crossed: every combination
      alpha: [0.0, 0.5, 1.0]
      d_model: [64, 128]
    zip:                        # paired: the i-th values together (equal lengths)
      lr: [1e-3, 3e-3]
      weight_decay: [1.0, 0.3]
    random:                     # n seeded draws, crossed with the rest
      n: 8
      seed: 0
      axes:
        alpha: {uniform: [0, 1]}
        lr: {loguniform: [1e-4, 1e-2]}
        d_model: {choice: [32, 64, 128]}
    seeds: 2                    # init seeds 0..n-1 (or a list), crossed with the rest

Members are the product grid x zip x random x seeds, in that order. A member's id names the swept values
and ends with a hash of its full config, so it is readable and stable: ``alpha0.5-d_model64-seed1-3f9c21ab``.

>>> members = expand_spec({"base": "fast", "set": {"p": 23}, "grid": {"alpha": [0.5, 1.0]}, "seeds": 2})
>>> [member_key(m, ["alpha", "seed"]) for m in members]
['alpha0.5-seed0', 'alpha0.5-seed1', 'alpha1-seed0', 'alpha1-seed1']
>>> member_id(members[0], ["alpha", "seed"]).startswith("alpha0.5-seed0-")
True
"""

import hashlib
import itertools
import json
import math
import random
from dataclasses import fields
from pathlib import Path
from typing import Any

from grokscope.errors import GrokscopeError
from grokscope.recipes import PRESETS, TrainConfig

SPEC_KEYS = ("base", "set", "grid", "zip", "random", "seeds")
"""The keys a spec may hold."""

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
"""How a random axis draws its values."""

MAX_MEMBERS = 100_000
"""A spec expanding to more members than this is refused before anything is built."""


def _config_fields() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def _fail(key: str, found: Any, expected: str) -> GrokscopeError:
    return GrokscopeError(f"{key} = {found!r}", expected=expected, where="sweep spec")


def load_spec(path: str | Path) -> dict:
    """Read a YAML (.yaml, .yml) or JSON spec file into a mapping; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise GrokscopeError(f"an unreadable file ({error.strerror})", expected="a sweep spec (YAML or JSON)",
                             where=str(path)) from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # yaml and json raise several types
        raise GrokscopeError(f"unparseable content ({type(error).__name__}: {str(error).splitlines()[0]})",
                             expected="a YAML or JSON mapping", where=str(path)) from None
    if not isinstance(data, dict):
        raise GrokscopeError(f"a {type(data).__name__}", expected="a mapping with keys among " + ", ".join(SPEC_KEYS),
                             where=str(path))
    return data


def _check_axis_names(section: str, names) -> None:
    known = _config_fields()
    for name in names:
        if name not in known:
            raise _fail(f"{section}.{name}", name, f"a TrainConfig field: {', '.join(known)}")
        if name == "seed" and section != "set":
            raise _fail(f"{section}.seed", name, "the `seeds` key for initialisation seeds")


def _values_list(key: str, values) -> list:
    if not isinstance(values, list) or not values:
        raise _fail(key, values, "a non-empty list of values")
    return values


def _grid_rows(grid) -> list[dict]:
    if grid is None:
        return [{}]
    if not isinstance(grid, dict):
        raise _fail("grid", grid, "a mapping of field -> list of values")
    _check_axis_names("grid", grid)
    names = list(grid)
    lists = [_values_list(f"grid.{name}", grid[name]) for name in names]
    return [dict(zip(names, combination)) for combination in itertools.product(*lists)]


def _zip_rows(zipped) -> list[dict]:
    if zipped is None:
        return [{}]
    if not isinstance(zipped, dict):
        raise _fail("zip", zipped, "a mapping of field -> list of values, all of one length")
    _check_axis_names("zip", zipped)
    lists = {name: _values_list(f"zip.{name}", values) for name, values in zipped.items()}
    lengths = {name: len(values) for name, values in lists.items()}
    if len(set(lengths.values())) > 1:
        raise _fail("zip", lengths, "lists of one length")
    length = next(iter(lengths.values()))
    return [{name: values[i] for name, values in lists.items()} for i in range(length)]


def _draw(rng: random.Random, key: str, distribution) -> Any:
    if not isinstance(distribution, dict) or len(distribution) != 1 or next(iter(distribution)) not in DISTRIBUTIONS:
        raise _fail(key, distribution, "one of {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {choice: [...]}, "
                                       "{randint: [lo, hi]}")
    kind, argument = next(iter(distribution.items()))
    if kind == "choice":
        return rng.choice(_values_list(f"{key}.choice", argument))
    if not (isinstance(argument, list) and len(argument) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in argument)
            and argument[0] <= argument[1]):
        raise _fail(f"{key}.{kind}", argument, "[low, high] with low <= high")
    low, high = argument
    if kind == "uniform":
        return rng.uniform(low, high)
    if kind == "randint":
        return rng.randint(int(low), int(high))
    if low <= 0:
        raise _fail(f"{key}.loguniform", argument, "positive bounds")
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _random_rows(section) -> list[dict]:
    if section is None:
        return [{}]
    if not isinstance(section, dict) or set(section) - {"n", "seed", "axes"} or "axes" not in section:
        raise _fail("random", section, "a mapping with n, seed and axes")
    n, seed, axes = section.get("n", 1), section.get("seed", 0), section["axes"]
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_MEMBERS:
        raise _fail("random.n", n, f"an integer in 1..{MAX_MEMBERS}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise _fail("random.seed", seed, "an integer")
    if not isinstance(axes, dict) or not axes:
        raise _fail("random.axes", axes, "a non-empty mapping of field -> distribution")
    _check_axis_names("random.axes", axes)
    rng = random.Random(seed)
    return [{name: _draw(rng, f"random.axes.{name}", axes[name]) for name in axes} for _ in range(n)]


def _seed_values(seeds) -> list[int] | None:
    if seeds is None:
        return None
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if not 1 <= seeds <= MAX_MEMBERS:
            raise _fail("seeds", seeds, f"a count in 1..{MAX_MEMBERS} or a list of seeds")
        return list(range(seeds))
    if isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                 for s in seeds) and len(set(seeds)) == len(seeds):
        return seeds
    raise _fail("seeds", seeds, "a count or a list of distinct non-negative integers")


def swept_axes(spec: dict) -> list[str]:
    """The TrainConfig fields the spec varies, in spec order (``seed`` last when ``seeds`` is given)."""
    axes: list[str] = []
    for section in ("grid", "zip"):
        axes.extend(name for name in (spec.get(section) or {}) if name not in axes)
    axes.extend(name for name in ((spec.get("random") or {}).get("axes") or {}) if name not in axes)
    if spec.get("seeds") is not None:
        axes.append("seed")
    return axes


def expand_spec(spec: dict) -> list[TrainConfig]:
    """Every member's TrainConfig, in the order grid x zip x random x seeds; errors name the spec key."""
    if not isinstance(spec, dict):
        raise _fail("spec", type(spec).__name__, "a mapping")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise _fail("keys", unknown, f"keys among {', '.join(SPEC_KEYS)}")
    base = spec.get("base", "nanda")
    if base not in PRESETS:
        raise _fail("base", base, f"a preset: {', '.join(sorted(PRESETS))}")
    fixed = spec.get("set") or {}
    if not isinstance(fixed, dict):
        raise _fail("set", fixed, "a mapping of field -> value")
    _check_axis_names("set", fixed)
    sections = [_grid_rows(spec.get("grid")), _zip_rows(spec.get("zip")), _random_rows(spec.get("random"))]
    seeds = _seed_values(spec.get("seeds"))
    seed_rows = [{}] if seeds is None else [{"seed": s} for s in seeds]
    count = math.prod(len(rows) for rows in sections) * len(seed_rows)
    if count > MAX_MEMBERS:
        raise _fail("members", count, f"at most {MAX_MEMBERS} members")
    overlap = [name for name in fixed if name in swept_axes(spec)]
    if overlap:
        raise _fail("set", overlap, "fields that no axis also sweeps")
    members = []
    for parts in itertools.product(*sections, seed_rows):
        settings = {name: _coerce(value) for name, value in fixed.items()}
        for part in parts:
            settings.update({name: _coerce(value) for name, value in part.items()})
        try:
            members.append(TrainConfig.preset(base, **settings))
        except GrokscopeError as error:
            raise GrokscopeError(f"a member with {settings} ({error})", expected="valid TrainConfig settings",
                                 where="sweep spec") from None
    return members


def _coerce(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: take numeric strings as the numbers they spell."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("/", "_").replace(" ", "")


def member_key(config: TrainConfig, axes: list[str]) -> str:
    """The readable part of a member's id: its values on the swept axes, e.g. ``alpha0.5-seed1``."""
    return "-".join(f"{name}{_format_value(getattr(config, name))}" for name in axes) or "member"


def config_hash(config: TrainConfig) -> str:
    """Eight hex digits of the SHA-256 of the config's canonical JSON: stable across sessions and machines."""
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def member_id(config: TrainConfig, axes: list[str]) -> str:
    """A member's folder name: ``member_key`` plus ``config_hash``, readable and stable for its config."""
    return f"{member_key(config, axes)}-{config_hash(config)}"
