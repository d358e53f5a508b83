"""Model files that loading cannot run code from.

``pickle`` and ``joblib`` files are programs: unpickling calls whatever callables the
file names, so loading one from elsewhere (a colleague, a download, a shared drive)
runs its author's code with your rights. Keep them for in-process uses, where the
bytes never leave your hands: ``clone``, joblib's parallel workers, a cache of your
own. To share a model, use :func:`save` and :func:`load` (or the estimators'
``save`` and ``load`` methods), which write and read a file that is data only.

The file
--------
One `safetensors <https://huggingface.co/docs/safetensors>`_ file: an 8-byte header
length, a JSON header, then the raw bytes of each tensor. The header's string
metadata holds, under the key ``"sklearn_roll"``, the *description*: a JSON object
with

* ``format`` (``"sklearn-roll-model"``) and ``format_version`` (an int, now 1);
* ``versions``: those of sklearn-roll, torch, scikit-learn and skorch that wrote it;
* ``estimator``: ``"ROLLClassifier"`` or ``"ROLLRegressor"``;
* ``params``: ``get_params(deep=False)``;
* ``fitted``: the attributes that fit learned from the data and that size the module
  (the estimators' ``_fitted_attributes``: ``classes_inferred_``, ``n_outputs_``,
  ``n_features_in_``, ...);
* ``history``: skorch's ``history_``;
* ``optimizer``: the optimizer's ``state_dict()``: per-parameter state and the
  param-group hyperparameters (learning rate, betas, ...);
* ``tensors``: the dtype and shape of every tensor in the file.

The tensors are the module's ``state_dict()`` (named ``module.<key>``), the
optimizer's state tensors (``optimizer.state.<index>.<name>``) and tensor-valued
parameters such as ``criterion__weight`` (``param.<name>``).

Values that JSON cannot hold are tagged objects with a single ``$`` key:
``{"$tuple": [...]}``, ``{"$array": {"dtype", "shape", "data"}}`` and ``{"$scalar":
{"dtype", "data"}}`` for numpy arrays and scalars (dtype as ``numpy.dtype.str``),
``{"$float": "nan"}`` for non-finite floats, ``{"$tensor": "<name>"}`` for a tensor of
the file, and ``{"$class": "module:qualname"}`` for a class (optimizer, criterion, a
user module class). The JSON is strict (no ``NaN`` literals, no duplicate keys).

Loading
-------
Nothing in the file is executed: the description is parsed as JSON, the tensors are
read by safetensors, and the estimator is rebuilt from its class, its parameters and
its fitted attributes (the built-in modules ``"mlp"``, ``"rnn"``, ``"cnn1d"`` and
``"cnn"`` from those alone), initialized without data, then given the stored tensors
after strict checks of their names, shapes and dtypes against the description and
the rebuilt module. A class named in the description is used only if it is allowed:

* torch's optimizers (``torch.optim``) as ``optimizer``, torch's losses
  (``torch.nn.modules.loss``) as ``criterion``, torch's ``DataLoader`` as
  ``iterator_train`` / ``iterator_valid`` and skorch's ``Dataset`` as ``dataset``,
  taken from modules that are already imported, so resolving them imports nothing;
* any class that the caller passes, or names by import path, in ``allowed_modules``
  (a user module class, a custom optimizer). Only a path named there is imported.

Anything else is refused with a :class:`ModelFileError` before it is imported.
Parameters come back as stored, so check ``get_params()`` of a model from elsewhere
before training it further (``device``, ``max_epochs``, ``torch_load_kwargs``, ...).

Compatibility
-------------
A file is read by the sklearn-roll releases that share its writer's major version,
or for 0.x releases its major.minor version (``0.1.*`` reads ``0.1.*`` files): those
releases keep the parameters and the modules' tensor layout. Other releases refuse
it. A reader that differs from the writer in any of the four recorded versions warns
(results may differ in the last bits) but loads, since the strict checks of every
tensor's name, shape and dtype still hold. A description's format version other than
the one this release reads, an unknown or a missing parameter, fitted attribute,
description entry or value tag is refused, never ignored.

Not stored: parameters that are objects rather than values (callback instances in
``callbacks``, a ``train_split`` object, a ``RandomState``): :func:`save` refuses
them; pass classes and their ``__`` parameters, or an int seed, instead.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import struct
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import safetensors.torch
import sklearn
import skorch
import skorch.dataset
import torch
from safetensors import SafetensorError
from sklearn.base import ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from skorch.exceptions import DeviceWarning
from skorch.history import History
from torch import nn
from torch.utils.data import DataLoader

from .estimators import ROLLClassifier, ROLLRegressor

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "load", "save"]

FORMAT = "sklearn-roll-model"
"""The format name a model file's description carries."""
FORMAT_VERSION = 1
"""The version of the file format this release writes and reads."""

_METADATA_KEY = "sklearn_roll"
_ESTIMATORS = {cls.__name__: cls for cls in (ROLLClassifier, ROLLRegressor)}
_DESCRIPTION_KEYS = {
    "format",
    "format_version",
    "versions",
    "estimator",
    "params",
    "fitted",
    "history",
    "optimizer",
    "tensors",
}
_VERSION_KEYS = ("sklearn-roll", "torch", "scikit-learn", "skorch")
# numpy dtype kinds whose values JSON holds exactly: bool, ints, floats, str, object.
_ARRAY_KINDS = "biufUO"
_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

# Classes a file may name without the caller's say-so, by parameter: (package, base).
_DEFAULT_CLASSES: dict[str, tuple[str, type]] = {
    "optimizer": ("torch.optim", torch.optim.Optimizer),
    "criterion": ("torch.nn.modules.loss", nn.Module),
    "iterator_train": ("torch.utils.data.dataloader", DataLoader),
    "iterator_valid": ("torch.utils.data.dataloader", DataLoader),
    "dataset": ("skorch.dataset", skorch.dataset.Dataset),
}


class ModelFileError(ValueError):
    """A model file that :func:`load` refuses: damaged, tampered with or incompatible.

    The message names the problem: an empty, truncated or non-safetensors file, a
    missing or unsupported format version, an incompatible sklearn-roll release,
    tensors that disagree with the description or the rebuilt module, or a class,
    parameter or entry that is not allowed or not known.
    """


# ------------------------------------------------------------------ saving


def save(estimator: ROLLClassifier | ROLLRegressor, path: str | os.PathLike) -> None:
    """Save a fitted estimator to a file that :func:`load` rebuilds it from.

    The file is a safetensors file: tensors, and a JSON description of everything
    else (see the module docstring). Loading it runs no code from it.

    Parameters
    ----------
    estimator : ROLLClassifier or ROLLRegressor
        A fitted estimator (not a subclass: loading rebuilds these two only).
    path : str or path-like
        Where to write; an existing file is replaced.

    Raises
    ------
    TypeError
        If the estimator is of another class, or a parameter holds an object that
        cannot be described as data (a callback instance, a ``train_split``
        object, ...).
    sklearn.exceptions.NotFittedError
        If the estimator is not fitted.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sklearn.datasets import load_iris
    >>> from sklearn_roll import ROLLClassifier
    >>> from sklearn_roll.persistence import load, save
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = ROLLClassifier(hidden_layer_sizes=(8,), max_epochs=2, random_state=0)
    >>> clf = clf.fit(X, y)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save(clf, Path(tmp) / "iris.safetensors")
    ...     restored = load(Path(tmp) / "iris.safetensors")
    >>> bool((restored.predict(X) == clf.predict(X)).all())
    True
    """
    if type(estimator) not in _ESTIMATORS.values():
        raise TypeError(
            f"save stores ROLLClassifier and ROLLRegressor estimators, got "
            f"{type(estimator).__qualname__}."
        )
    check_is_fitted(estimator)
    tensors: dict[str, torch.Tensor] = {}
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "estimator": type(estimator).__name__,
        "params": {
            name: _encode(value, f"param.{name}", tensors)
            for name, value in estimator.get_params(deep=False).items()
        },
        "fitted": {
            name: _encode(getattr(estimator, name), f"fitted.{name}", tensors)
            for name in estimator._fitted_attributes
            if hasattr(estimator, name)
        },
        "history": _encode(estimator.history_.to_list(), "history", tensors),
        "optimizer": _encode_optimizer(estimator.optimizer_, tensors),
    }
    for key, tensor in estimator.module_.state_dict().items():
        tensors[f"module.{key}"] = _cpu_copy(tensor)
    description["tensors"] = {
        name: {"dtype": _dtype_name(t), "shape": list(t.shape)} for name, t in tensors.items()
    }
    text = json.dumps(description, allow_nan=False)
    safetensors.torch.save_file(tensors, path, metadata={_METADATA_KEY: text})


def _versions() -> dict[str, str]:
    import sklearn_roll  # the package's __init__ defines the version after its imports

    return {
        "sklearn-roll": sklearn_roll.__version__,
        "torch": torch.__version__,
        "scikit-learn": sklearn.__version__,
        "skorch": skorch.__version__,
    }


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    # A contiguous copy: safetensors refuses views and tensors that share memory
    # (tied weights), and the copy keeps the file independent of later training.
    return tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _import_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _encode(value: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON; a tensor goes into ``tensors`` under the name ``where``."""
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, (np.ndarray, np.generic)):
        return _encode_array(value, where)
    if kind in (list, tuple):
        items = [_encode(v, f"{where}.{i}", tensors) for i, v in enumerate(value)]
        return items if kind is list else {"$tuple": items}
    if kind is dict:
        bad = [k for k in value if type(k) is not str or k.startswith("$")]
        if bad:
            raise TypeError(
                f"Cannot save {where}: dict keys must be strings not starting with '$', "
                f"got {bad[0]!r}."
            )
        return {k: _encode(v, f"{where}.{k}", tensors) for k, v in value.items()}
    if isinstance(value, type):
        return {"$class": _import_path(value)}
    if isinstance(value, torch.Tensor):
        if where in tensors:  # e.g. dict keys "a.b" and "a" -> "b" name the same place
            raise TypeError(f"Cannot save {where}: two tensors would be stored under its name.")
        tensors[where] = _cpu_copy(value)
        return {"$tensor": where}
    raise TypeError(
        f"Cannot save {where}={value!r}: a model file describes values (None, bool, int, "
        "float, str, lists, tuples, dicts, numpy arrays, tensors and classes), not "
        f"objects of type {kind.__qualname__}; pass a class and its '__' parameters, or "
        "use pickle for in-process copies."
    )


def _encode_array(value: np.ndarray | np.generic, where: str) -> dict:
    array = np.asarray(value)
    if array.dtype.kind not in _ARRAY_KINDS:
        raise TypeError(f"Cannot save {where}: numpy dtype {array.dtype} is not supported.")
    data = [_encode_element(x, where) for x in array.ravel().tolist()]
    if isinstance(value, np.generic):
        return {"$scalar": {"dtype": array.dtype.str, "data": data[0]}}
    return {"$array": {"dtype": array.dtype.str, "shape": list(array.shape), "data": data}}


def _encode_element(x: Any, where: str) -> Any:
    if x is None or type(x) in (bool, int, str):
        return x
    if type(x) is float:
        return x if math.isfinite(x) else {"$float": repr(x)}
    raise TypeError(f"Cannot save {where}: an object array holds {type(x).__qualname__}.")


def _encode_optimizer(optimizer: torch.optim.Optimizer, tensors: dict) -> dict:
    state = optimizer.state_dict()
    return {
        # JSON keys are strings; the parameter indices come back as ints.
        "state": {
            str(i): _encode(s, f"optimizer.state.{i}", tensors) for i, s in state["state"].items()
        },
        "param_groups": _encode(state["param_groups"], "optimizer.param_groups", tensors),
    }


# ------------------------------------------------------------------ loading


def load(
    path: str | os.PathLike,
    *,
    allowed_modules: Iterable[type | str] | type | str = (),
    estimator_class: type | None = None,
) -> ROLLClassifier | ROLLRegressor:
    """Rebuild the estimator that :func:`save` wrote, running no code from the file.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save`.
    allowed_modules : class, str or iterable of them, default=()
        Classes the file may name beyond torch's optimizers and losses (see the
        module docstring): your module class, a custom optimizer, ..., as the class
        itself or its import path ``"package.module:ClassName"``. Only paths named
        here are imported.
    estimator_class : {ROLLClassifier, ROLLRegressor} or None, default=None
        Refuse a file that holds the other one; None takes what the file holds.

    Returns
    -------
    ROLLClassifier or ROLLRegressor
        Fitted: it predicts, certifies and explains as the saved estimator did, and
        ``partial_fit`` continues its training (optimizer state and history included).

    Raises
    ------
    ModelFileError
        If the file is damaged, tampered with, written by an incompatible release,
        or names a class that is not allowed.

    Warns
    -----
    UserWarning
        If the file was written with other versions of sklearn-roll, torch,
        scikit-learn or skorch.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.preprocessing import scale
    >>> from sklearn_roll import ROLLRegressor
    >>> from sklearn_roll.persistence import load, save
    >>> X, y = load_diabetes(return_X_y=True)
    >>> X, y = scale(X), scale(y)
    >>> reg = ROLLRegressor(hidden_layer_sizes=(8,), max_epochs=2, random_state=0)
    >>> reg = reg.fit(X, y)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     save(reg, Path(tmp) / "diabetes.safetensors")
    ...     restored = load(Path(tmp) / "diabetes.safetensors")
    >>> bool((restored.certified_margin(X) == reg.certified_margin(X)).all())
    True
    """
    allowed = _allowed(allowed_modules)
    data = _read(path)
    try:
        description = _description(_header(data))
        cls = _estimator_class(description["estimator"], estimator_class)
        _check_versions(description["versions"])
        reader = _Reader(_tensors(data, description["tensors"]), allowed)
        estimator = _rebuild(cls, description, reader)
    except RecursionError as exc:
        raise ModelFileError("The model file's JSON is nested too deeply.") from exc
    reader.check_all_used()
    return estimator


def _allowed(allowed_modules: Iterable[type | str] | type | str) -> dict[str, type | None]:
    """Import path -> class (None for a path to import when the file names it)."""
    if isinstance(allowed_modules, (type, str)):
        allowed_modules = [allowed_modules]
    allowed: dict[str, type | None] = {}
    for entry in allowed_modules:
        if isinstance(entry, type):
            allowed[_import_path(entry)] = entry
        elif isinstance(entry, str) and _PATH.fullmatch(entry):
            allowed.setdefault(entry, None)
        else:
            raise TypeError(
                "allowed_modules takes classes and import paths 'package.module:ClassName', "
                f"got {entry!r}."
            )
    return allowed


def _read(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _header(data: bytes) -> dict:
    """The safetensors header, after checking that the file is one, and whole."""
    if not data:
        raise ModelFileError("The model file is empty (0 bytes).")
    if len(data) < 9 or data[8:9] != b"{":
        raise ModelFileError(
            "Not a safetensors file: a model file starts with an 8-byte header length and "
            f"a JSON header, but this one starts with {data[:12]!r}."
        )
    (length,) = struct.unpack("<Q", data[:8])
    if 8 + length > len(data):
        raise ModelFileError(
            f"The model file is truncated: its header needs {8 + length} bytes, the file "
            f"has {len(data)}."
        )
    try:
        header = json.loads(data[8 : 8 + length])
        end = max(
            (int(entry["data_offsets"][1]) for k, entry in header.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ModelFileError(f"The safetensors header is corrupt: {exc}") from exc
    size = 8 + length + end
    if size > len(data):
        raise ModelFileError(
            f"The model file is truncated: its tensors need {size} bytes, the file has {len(data)}."
        )
    if size < len(data):
        raise ModelFileError(
            f"The model file has {len(data) - size} bytes after its last tensor (damaged "
            "or not written by sklearn-roll)."
        )
    return header


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise ModelFileError(f"The description has the key {duplicate!r} twice.")
    return dict(pairs)


def _json_constant(name: str) -> None:
    raise ModelFileError(f"The description is not strict JSON: it contains {name}.")


def _description(header: dict) -> dict:
    """The description, after checking its format, format version and entries."""
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not isinstance(metadata.get(_METADATA_KEY), str):
        raise ModelFileError(
            "Not an sklearn-roll model file: a safetensors file without the "
            f"{_METADATA_KEY!r} description in its metadata."
        )
    try:
        description = json.loads(
            metadata[_METADATA_KEY],
            object_pairs_hook=_json_object,
            parse_constant=_json_constant,
        )
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"The description is not valid JSON: {exc}") from exc
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        found = description.get("format") if isinstance(description, dict) else None
        raise ModelFileError(
            f"Not an sklearn-roll model file: the description's format is {found!r}, "
            f"not {FORMAT!r}."
        )
    if "format_version" not in description:
        raise ModelFileError("The description has no format version ('format_version').")
    version = description["format_version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise ModelFileError(
            f"Unsupported format version {version!r}: this sklearn-roll reads model files "
            f"of format version {FORMAT_VERSION}."
        )
    _check_keys(description, _DESCRIPTION_KEYS, "the description")
    return description


def _check_keys(found: dict, expected: Iterable[str], what: str) -> None:
    unknown = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    if unknown:
        raise ModelFileError(f"Unknown entries in {what}: {', '.join(map(repr, unknown))}.")
    if missing:
        raise ModelFileError(f"Missing entries in {what}: {', '.join(map(repr, missing))}.")


def _estimator_class(name: Any, expected: type | None) -> type:
    cls = _ESTIMATORS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ModelFileError(
            f"The file describes an estimator of class {name!r}; only "
            f"{' and '.join(_ESTIMATORS)} can be loaded."
        )
    if expected is not None and cls is not expected:
        raise ModelFileError(
            f"The file holds a {name}, not a {expected.__name__}: load it with "
            f"{name}.load or sklearn_roll.persistence.load."
        )
    return cls


def _compatible_release(version: str) -> tuple[int, ...]:
    """The part of a version that must match: major, or major.minor before 1.0."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ModelFileError(f"The description's sklearn-roll version {version!r} is no version.")
    major, minor = int(match[1]), int(match[2])
    return (major,) if major else (major, minor)


def _check_versions(versions: Any) -> None:
    if not isinstance(versions, dict):
        raise ModelFileError("The description's 'versions' is not an object.")
    _check_keys(versions, _VERSION_KEYS, "the description's 'versions'")
    if not all(isinstance(v, str) for v in versions.values()):
        raise ModelFileError("The description's 'versions' must be strings.")
    ours = _versions()
    writer = versions["sklearn-roll"]
    if _compatible_release(writer) != _compatible_release(ours["sklearn-roll"]):
        raise ModelFileError(
            f"The model file was written by sklearn-roll {writer}, which this sklearn-roll "
            f"{ours['sklearn-roll']} cannot read: files are read by the releases of the "
            "writer's major version (major.minor before 1.0)."
        )
    differ = [
        f"{k} {versions[k]} (here {ours[k]})" for k in _VERSION_KEYS if versions[k] != ours[k]
    ]
    if differ:
        warnings.warn(
            f"The model file was written with {', '.join(differ)}; predictions and "
            "certificates may differ from the saved model's in the last bits.",
            UserWarning,
            stacklevel=4,
        )


def _tensors(data: bytes, table: Any) -> dict[str, torch.Tensor]:
    """The file's tensors, after checking them against the description's table."""
    try:
        tensors = safetensors.torch.load(data)
    except SafetensorError as exc:
        raise ModelFileError(f"The model file's tensors cannot be read: {exc}") from exc
    if not isinstance(table, dict):
        raise ModelFileError("The description's 'tensors' is not an object.")
    extra = sorted(tensors.keys() - table.keys())
    missing = sorted(table.keys() - tensors.keys())
    if extra:
        raise ModelFileError(f"The file has tensors that the description does not list: {extra}.")
    if missing:
        raise ModelFileError(f"The file is missing tensors that the description lists: {missing}.")
    for name, tensor in tensors.items():
        entry = table[name]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape"}:
            raise ModelFileError(f"The description's entry for tensor {name!r} is malformed.")
        if entry["dtype"] != _dtype_name(tensor):
            raise ModelFileError(
                f"Tensor {name!r} is {_dtype_name(tensor)} in the file, but the description "
                f"says {entry['dtype']}."
            )
        if entry["shape"] != list(tensor.shape):
            raise ModelFileError(
                f"Tensor {name!r} has shape {list(tensor.shape)} in the file, but the "
                f"description says {entry['shape']}."
            )
    return tensors


class _Reader:
    """Decodes the description's values, resolving only the classes that are allowed."""

    def __init__(self, tensors: dict[str, torch.Tensor], allowed: dict[str, type | None]):
        self.tensors = tensors
        self.allowed = allowed
        self.used: set[str] = set()

    def value(self, obj: Any, where: str, param: str | None = None) -> Any:
        """Decode ``obj``; ``param`` names the parameter whose classes are resolved."""
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, list):
            return [self.value(v, f"{where}.{i}", param) for i, v in enumerate(obj)]
        tags = [k for k in obj if k.startswith("$")]
        if not tags:
            return {k: self.value(v, f"{where}.{k}", param) for k, v in obj.items()}
        if len(obj) != 1:
            raise ModelFileError(f"{where}: a tagged value has one key, got {sorted(obj)}.")
        tag, content = next(iter(obj.items()))
        if tag == "$tuple" and isinstance(content, list):
            return tuple(self.value(content, where, param))
        if tag == "$float" and content in ("nan", "inf", "-inf"):
            return float(content)
        if tag in ("$array", "$scalar") and isinstance(content, dict):
            return _decode_array(content, where, scalar=tag == "$scalar")
        if tag == "$tensor":
            return self.tensor(content, where)
        if tag == "$class":
            return self.resolve_class(content, where, param)
        raise ModelFileError(f"{where}: unknown or malformed value tag {tag!r}.")

    def tensor(self, name: Any, where: str) -> torch.Tensor:
        # A tensor is stored under the name of the place it fills: nothing else may
        # refer to it (e.g. a parameter to the module's weights).
        if name != where:
            raise ModelFileError(f"{where} refers to tensor {name!r}, not to {where!r}.")
        if name not in self.tensors:
            raise ModelFileError(f"{where} refers to tensor {name!r}, which the file lacks.")
        self.used.add(name)
        return self.tensors[name]

    def resolve_class(self, path: Any, where: str, param: str | None) -> type:
        if not isinstance(path, str):
            raise ModelFileError(f"{where}: a class is named by a string, got {path!r}.")
        cls = _default_class(path, param)
        if cls is None and path in self.allowed:
            cls = self.allowed[path] or _import_class(path)
        if cls is None:
            raise ModelFileError(
                f"{where} names the class {path!r}, which is not allowed: pass the class "
                f"(or {path!r}) in allowed_modules if you trust it."
            )
        return cls

    def check_all_used(self) -> None:
        unused = sorted(
            name
            for name in self.tensors
            if name not in self.used and not name.startswith("module.")
        )
        if unused:
            raise ModelFileError(
                f"The file has tensors that the description does not use: {unused}."
            )


def _decode_array(content: dict, where: str, scalar: bool) -> np.ndarray | np.generic:
    keys = {"dtype", "data"} if scalar else {"dtype", "shape", "data"}
    if set(content) != keys:
        raise ModelFileError(f"{where}: a numpy value has the entries {sorted(keys)}.")
    try:
        dtype = np.dtype(content["dtype"])
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: unknown numpy dtype {content['dtype']!r}.") from exc
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ModelFileError(f"{where}: numpy dtype {dtype} is not supported.")
    data = [content["data"]] if scalar else content["data"]
    if not isinstance(data, list) or not all(_is_element(x) for x in data):
        raise ModelFileError(f"{where}: the data of a numpy value is a list of plain values.")
    values = [float(x["$float"]) if isinstance(x, dict) else x for x in data]
    try:
        array = np.array(values, dtype=dtype)
        value = array[0] if scalar else array.reshape(content["shape"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise ModelFileError(f"{where}: the numpy value cannot be rebuilt: {exc}") from exc
    # numpy casts silently (1.5 to int, long strings to a short str dtype): the value
    # must write back as the very description it was read from.
    tag = "$scalar" if scalar else "$array"
    if _encode_array(value, where) != {tag: content}:
        raise ModelFileError(f"{where}: the data do not fit dtype {content['dtype']!r}.")
    return value


def _is_element(x: Any) -> bool:
    if x is None or isinstance(x, (bool, int, float, str)):
        return True
    return isinstance(x, dict) and list(x) == ["$float"] and x["$float"] in ("nan", "inf", "-inf")


def _default_class(path: str, param: str | None) -> type | None:
    """The class at ``path`` if ``param`` may take it by default, else None.

    The class is looked up in modules that are already imported: nothing is imported.
    """
    if param not in _DEFAULT_CLASSES:
        return None
    package, base = _DEFAULT_CLASSES[param]
    module_name, _, name = path.partition(":")
    if module_name != package and not module_name.startswith(package + "."):
        return None
    if not name.isidentifier() or name.startswith("_"):
        return None
    cls = getattr(sys.modules.get(module_name), name, None)
    if isinstance(cls, type) and issubclass(cls, base) and _import_path(cls) == path:
        return cls
    return None


def _import_class(path: str) -> type:
    """Import the class at ``path``, which the caller named in ``allowed_modules``."""
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ModelFileError(f"allowed_modules names {path!r}, which is not a class.")
    return obj


def _rebuild(cls: type, description: dict, reader: _Reader) -> ROLLClassifier | ROLLRegressor:
    """The estimator, initialized from its description, with the file's tensors."""
    estimator = cls(**_params(cls, description["params"], reader))
    fitted = description["fitted"]
    if not isinstance(fitted, dict):
        raise ModelFileError("The description's 'fitted' is not an object.")
    unknown = sorted(set(fitted) - set(cls._fitted_attributes))
    if unknown:
        raise ModelFileError(f"Unknown fitted attributes in the description: {unknown}.")
    for name, value in fitted.items():
        setattr(estimator, name, reader.value(value, f"fitted.{name}"))
    _check_classes(estimator)
    try:
        estimator._check_params()
        # Initializing draws weights that the file's replace: keep the global RNG.
        with torch.random.fork_rng(devices=[]):
            estimator.initialize()
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"The description does not rebuild a {cls.__name__}: {exc}") from exc
    _load_module(estimator, reader.tensors)
    _load_optimizer(estimator, description["optimizer"], reader)
    history = reader.value(description["history"], "history")
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise ModelFileError("The description's 'history' is not a list of epochs.")
    estimator.history_ = History(history)
    return estimator


def _params(cls: type, encoded: Any, reader: _Reader) -> dict:
    if not isinstance(encoded, dict):
        raise ModelFileError("The description's 'params' is not an object.")
    known = cls().get_params(deep=False)
    # skorch routes 'prefix__name' parameters to the module, optimizer, ...
    prefixes = {"module", "criterion", "optimizer", *cls.prefixes_}
    unknown = sorted(
        name for name in set(encoded) - set(known) if name.partition("__")[0] not in prefixes
    )
    if unknown:
        raise ModelFileError(
            f"Unknown parameters in the description: {unknown} ({cls.__name__} has no "
            "such parameters)."
        )
    missing = sorted(set(known) - set(encoded))
    if missing:
        raise ModelFileError(f"The description lacks the parameters {missing}.")
    params = {name: reader.value(v, f"param.{name}", name) for name, v in encoded.items()}
    device = params["device"]
    if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        # As skorch does when it unpickles a GPU net on a machine without one.
        warnings.warn(
            f"The model was saved with device={device!r}, but CUDA is not available; "
            "loading it with device='cpu'.",
            DeviceWarning,
            stacklevel=5,
        )
        params["device"] = "cpu"
    return params


def _check_classes(estimator: Any) -> None:
    if not isinstance(estimator, ClassifierMixin):
        return
    try:
        n_classes = len(estimator.classes_)
    except AttributeError as exc:
        raise ModelFileError("The description of a classifier holds no classes.") from exc
    if n_classes != getattr(estimator, "n_outputs_", n_classes):
        raise ModelFileError(
            f"The description lists {n_classes} classes but n_outputs_={estimator.n_outputs_}."
        )


def _load_module(estimator: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Load the ``module.*`` tensors, strictly matching the rebuilt module's."""
    stored = {k.removeprefix("module."): t for k, t in tensors.items() if k.startswith("module.")}
    expected = estimator.module_.state_dict()
    extra = sorted(stored.keys() - expected.keys())
    missing = sorted(expected.keys() - stored.keys())
    if extra:
        raise ModelFileError(f"The file has module tensors the rebuilt module lacks: {extra}.")
    if missing:
        raise ModelFileError(f"The file lacks tensors of the rebuilt module: {missing}.")
    for key, tensor in stored.items():
        want = expected[key]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise ModelFileError(
                f"Tensor 'module.{key}' is {_dtype_name(tensor)} of shape {list(tensor.shape)} "
                f"in the file, but {_dtype_name(want)} of shape {list(want.shape)} in the "
                "module rebuilt from the description."
            )
    estimator.module_.load_state_dict(stored, strict=True)


def _load_optimizer(estimator: Any, encoded: Any, reader: _Reader) -> None:
    if not isinstance(encoded, dict):
        raise ModelFileError("The description's 'optimizer' is not an object.")
    _check_keys(encoded, ("state", "param_groups"), "the description's 'optimizer'")
    state, groups = encoded["state"], encoded["param_groups"]
    # Canonical ASCII decimals only: int() also reads "01" and other scripts' digits.
    if not isinstance(state, dict) or not all(
        k.isascii() and k.isdigit() and str(int(k)) == k for k in state
    ):
        raise ModelFileError("The optimizer state is keyed by parameter indices.")
    groups = reader.value(groups, "optimizer.param_groups")
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
    ):
        raise ModelFileError("The optimizer's param_groups are not a list of groups.")
    indices = {i for group in groups for i in group["params"]}
    strays = sorted(int(k) for k in state if int(k) not in indices)
    if strays:
        raise ModelFileError(f"The optimizer state names parameters {strays} of no group.")
    state_dict = {
        "state": {int(k): reader.value(v, f"optimizer.state.{k}") for k, v in state.items()},
        "param_groups": groups,
    }
    try:
        estimator.optimizer_.load_state_dict(state_dict)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelFileError(
            f"The optimizer state does not fit the rebuilt optimizer: {exc}"
        ) from exc
