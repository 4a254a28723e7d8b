"""The search space of a sweep: RecBole's params file, its grid, seeded random draws, hyperopt's form.

Used by :mod:`recbole_mmm4rec.tuning`; a trial's identity in the journal is :func:`key` of its params.
"""

import ast
import itertools
import json
import math
from collections import namedtuple

import numpy as np

PARAM_TYPES = ("choice", "uniform", "quniform", "loguniform")

# One line of a params file; ``where`` is "file:line" for error messages.
Param = namedtuple("Param", "kind values where")


def read_params_file(path):
    """RecBole's params file: one ``name type values`` per line, e.g.

        learning_rate choice [0.001,0.0005]
        hidden_dropout_prob uniform 0.1,0.5
        d_state quniform 16,64,16
        weight_decay loguniform -9,-4       (hyperopt's loguniform: exp(uniform(-9, -4)))

    Blank lines and lines starting with ``#`` are skipped. Returns {name: Param} in file order; anything
    else is a ValueError naming the file and line.
    """
    space = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{path}:{number}"
            fields = line.split(None, 2)
            if len(fields) < 3:
                raise ValueError(f"{where}: expected 'name type values' (e.g. 'learning_rate choice "
                                 f"[0.001,0.0005]'), got {line!r}")
            name, kind, text = fields
            if name in space:
                raise ValueError(f"{where}: {name!r} is already defined at {space[name].where}")
            space[name] = Param(kind, _param_values(kind, text, where), where)
    if not space:
        raise ValueError(f"{path}: no parameters (expected lines like 'learning_rate choice [0.001,0.0005]')")
    return space


def _param_values(kind, text, where):
    if kind == "choice":
        try:
            values = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values = None
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: choice needs a non-empty list like [64,128], got {text!r}")
        return values
    if kind not in PARAM_TYPES:
        raise ValueError(f"{where}: unknown type {kind!r} (one of {', '.join(PARAM_TYPES)})")
    count = 3 if kind == "quniform" else 2
    try:
        values = [float(x) for x in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != count or not values[0] < values[1] or (kind == "quniform" and values[2] <= 0):
        form = "low,high,q (q > 0)" if kind == "quniform" else "low,high"
        raise ValueError(f"{where}: {kind} needs {form} with low < high, got {text!r}")
    return values


def grid(space):
    """Every combination of the params (exhaustive search), in file order; all must be ``choice``."""
    for name, param in space.items():
        if param.kind != "choice":
            raise ValueError(f"{param.where}: exhaustive search needs every parameter to be a choice, "
                             f"{name} is {param.kind} (use --algo=random or bayes)")
    names = list(space)
    return [dict(zip(names, values)) for values in itertools.product(*(p.values for p in space.values()))]


def draw(space, count, seed):
    """``count`` random params (random search), the same ones for the same seed; duplicates dropped."""
    rng = np.random.default_rng(seed)
    drawn = {}
    for _ in range(count):
        params = {name: _draw_one(param, rng) for name, param in space.items()}
        drawn.setdefault(key(params), params)
    return list(drawn.values())


def _draw_one(param, rng):
    if param.kind == "choice":
        return param.values[rng.integers(len(param.values))]
    value = rng.uniform(param.values[0], param.values[1])
    if param.kind == "loguniform":
        return math.exp(value)
    if param.kind == "quniform":
        return _quantize(value, param.values[2], param.values)
    return value


def _quantize(value, q, bounds):
    value = round(value / q) * q
    return int(value) if all(float(b).is_integer() for b in bounds) else value


def hyperopt_space(space):
    """The same space for hyperopt (quniform with integer bounds yields ints, as a model needs for sizes)."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    result = {}
    for name, param in space.items():
        if param.kind == "choice":
            result[name] = hp.choice(name, param.values)
        elif param.kind == "quniform":
            node = hp.quniform(name, *param.values)
            result[name] = scope.int(node) if all(float(v).is_integer() for v in param.values) else node
        else:
            result[name] = getattr(hp, param.kind)(name, *param.values)
    return result


def key(params):
    """A trial's identity in the journal: its params as canonical JSON."""
    return json.dumps(plain(params), sort_keys=True)


def plain(value):
    """NumPy scalars, tuples and nested dicts as plain JSON/yaml values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
