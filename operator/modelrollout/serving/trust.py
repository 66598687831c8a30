"""Which types a skops model file may hold: the policy `modelrollout serve` loads models under.

skops itself trusts plain data (int, float, str, list, dict, ...), scikit-learn's public
estimators, numpy arrays, dtypes, ufuncs and random generators, and
`skops.io.get_untrusted_types` reports every other type a file names. For the usual models
that is nothing, or the tree inside a tree model (`sklearn.tree._tree.Tree`, also in forests
and gradient boosting) or a histogram boosting's `...predictor.TreePredictor`. So a reported
type loads here only if it is a *class* named where it is defined, and that class is

- defined in scikit-learn, outside its test helpers and vendored code: an internal part of
  a model;
- a numpy scalar or dtype class, or a scipy sparse matrix or array class: data.

Everything else is refused: functions (`builtins.eval`, `posix.system`, `numpy.load`), operator
and method references (`operator.attrgetter`), whole modules (`collections.*`, `os.*`), and any
name that reaches a thing through a module that merely imports it (`sklearn.datasets._base.makedirs`
is `os.makedirs`). A model needs none of them, and they are how a file would run code.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

import numpy as np

ROOTS = ("sklearn", "numpy", "scipy")
NOT_MODEL_PARTS = {"tests", "testing", "_testing", "_mocking", "externals", "f2py", "distutils"}  # nor imported


def refused_types(names: Iterable[str]) -> list[str]:
    """The names, of those skops reports as untrusted, that this policy refuses."""
    return [n for n in names if not trusted_type(n)]


def trusted_type(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    root = module.partition(".")[0]
    if root not in ROOTS or not attr.isidentifier() or NOT_MODEL_PARTS.intersection(module.split(".")):
        return False
    try:  # only modules of scikit-learn, numpy and scipy are ever imported here
        obj = getattr(importlib.import_module(module), attr)
    except Exception:
        return False
    if not isinstance(obj, type) or f"{obj.__module__}.{obj.__qualname__}" != name:
        return False
    if root == "sklearn":
        return True
    if root == "numpy":
        return issubclass(obj, np.generic | np.dtype)
    from scipy import sparse

    return issubclass(obj, sparse.spmatrix | sparse.sparray)
