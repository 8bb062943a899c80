"""Reading files someone else may have written, without running their code.

* :func:`load_tensors`: ``torch.load(..., weights_only=True)`` (tensors, numbers, strings and
  plain containers; never a pickled object) with one short message that says why a file is
  refused, instead of PyTorch's paragraph.
* :func:`no_code_loading`: a block in which the calling thread cannot unpickle anything but
  tensors and sympy parses only arithmetic. ``torch.export.load`` unpickles any payload a
  ``.pt2`` file marks as pickled and parses its shape expressions with ``sympy.sympify``
  (``eval``); :func:`autoprune.deploy.programs.load_program` runs it inside this block. A
  program that ``torch.export.save`` wrote from a plain model has no pickled payload, so it
  loads; a crafted one is refused with :class:`UnsafeFileError`.

The block patches ``torch.load``, ``pickle.load``/``loads``, ``torch._C._pickle_load_obj`` and
``sympy.sympify`` with wrappers that act only in the thread inside the block and pass every
other call through unchanged; they are removed when the last block ends.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autoprune.errors import UserError, first_sentence

__all__ = ["UnsafeFileError", "load_tensors", "no_code_loading", "unreadable_reason"]


class UnsafeFileError(UserError):
    """A file asked to run code to load (a pickled object, a shape expression that is not
    arithmetic); nothing of it was run."""


# -- weights-only loading ---------------------------------------------------------------

_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def unreadable_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words.

    Example:
        >>> import pickle
        >>> unreadable_reason(pickle.UnpicklingError("Weights only load failed. ... Unsupported global: "
        ...                                          "GLOBAL mymodule.Net was not an allowed global"))
        'it holds a pickled object (mymodule.Net), which autoprune does not unpickle'
    """
    text = str(exc)
    found = _GLOBAL.search(text)
    if found:
        return f"it holds a pickled object ({found.group(1)}), which autoprune does not unpickle"
    if isinstance(exc, EOFError):
        return "it is empty"
    if "Unsupported operand" in text or "invalid load key" in text:
        return "it is not a file torch.save wrote"
    if "PytorchStreamReader" in text:
        return f"it is truncated or damaged ({first_sentence(exc)})"
    return first_sentence(exc)


def load_tensors(path: str | os.PathLike, *, what: str, fix: str,
                 not_one: str | None = None) -> Any:  # noqa: ANN401 - what the file holds
    """``torch.load(path, weights_only=True, map_location="cpu")``: tensors and plain containers only.

    Args:
        path: The file.
        what: What the file should be, for the message (``"checkpoint"``, ``"weights file"``).
        fix: What to do instead, for the message.
        not_one: What to call a file that holds pickled objects (``"is not an autoprune
            checkpoint"``; default ``"cannot be read"``).

    Raises:
        UserError: ``"<what> '<path>' cannot be read: <reason>; <fix>."`` for a file that is not
            there, is empty, damaged, not written by torch.save, or holds pickled objects.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist; {fix}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors, truncated files, foreign formats
        reason = unreadable_reason(exc)
        verdict = not_one if not_one is not None and reason.startswith("it holds a pickled") else "cannot be read"
        raise UserError(f"{what} '{path}' {verdict}: {reason}; {fix}.") from None


# -- a block without code loading -------------------------------------------------------

_local = threading.local()
_lock = threading.Lock()
_users = 0
_patched: list[tuple[Any, str, Any, Any]] = []  # (owner, attribute, original, wrapper)

# what a shape expression may call besides torch's own functions (passed to sympify as its locals):
# the sympy classes torch 2.x writes expressions with (``Symbol('s31', positive=True, integer=True)``)
_SYMPY_CALLS = frozenset({
    "Symbol", "Dummy", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod", "floor",
    "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
    "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or", "Not", "Piecewise", "ExprCondPair", "Tuple",
    "true", "false", "oo", "zoo", "nan", "Infinity", "NegativeInfinity",
})
_PLAIN_STRING = re.compile(r"^[\w.+\-]*$")
_AST_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not,
            ast.Invert, ast.BitAnd, ast.BitOr, ast.BitXor, ast.LShift, ast.RShift, ast.And, ast.Or, ast.Eq,
            ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Load)


def _guarded() -> bool:
    return getattr(_local, "depth", 0) > 0


def _arithmetic(text: str, callables: set[str]) -> bool:
    """Whether ``text`` is an expression that ``eval`` cannot turn into code: numbers, names
    that do not start with ``_``, plain strings (symbol names), arithmetic, comparisons, and
    calls of sympy's classes (``callables`` and :data:`_SYMPY_CALLS`) by name with such
    arguments. No attribute access, subscripts, lambdas or comprehensions."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Tuple, *_AST_OPS)):
            continue
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and (node.func.id in callables or node.func.id in _SYMPY_CALLS)):
                return False
        elif isinstance(node, ast.keyword):
            if node.arg is None or node.arg.startswith("_"):
                return False
        elif isinstance(node, ast.Name):
            if node.id.startswith("_"):
                return False
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not _PLAIN_STRING.match(node.value):
                return False
            if not isinstance(node.value, (int, float, bool, str, type(None))):
                return False
        else:
            return False
    return True


def _refuse(what: str) -> UnsafeFileError:
    where = getattr(_local, "path", "the file")
    return UnsafeFileError(f"'{where}' {what}, which autoprune does not load (it could run code); "
                           f"use a file autoprune wrote, or load it yourself only if you trust where it came from.")


def _wrappers() -> list[tuple[Any, str, Any]]:
    """``(owner, attribute, wrapper factory)`` for every way torch.export.load can run code."""
    import pickle

    import sympy
    import torch

    unset = object()

    def load_factory(original: Any) -> Any:  # noqa: ANN401
        def load(f: Any, *args: Any, weights_only: Any = unset, **kwargs: Any) -> Any:  # noqa: ANN401
            if not _guarded():
                return original(f, *args, **kwargs) if weights_only is unset else \
                    original(f, *args, weights_only=weights_only, **kwargs)
            if weights_only is False or kwargs.get("pickle_module") is not None or (args[1:2] and args[1] is not None):
                raise _refuse("holds a pickled object")
            return original(f, *args, weights_only=True, **kwargs)
        return load

    def refusing_factory(what: str) -> Any:  # noqa: ANN401
        def factory(original: Any) -> Any:  # noqa: ANN401
            def refusing(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
                if _guarded():
                    raise _refuse(what)
                return original(*args, **kwargs)
            return refusing
        return factory

    def sympify_factory(original: Any) -> Any:  # noqa: ANN401
        def sympify(a: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            if _guarded() and isinstance(a, str):
                names = kwargs.get("locals") or (args[0] if args and isinstance(args[0], dict) else None) or {}
                if not _arithmetic(a, set(names)):
                    raise _refuse(f"holds a shape expression that is not arithmetic ({a[:60]!r})")
            return original(a, *args, **kwargs)
        return sympify

    return [(torch, "load", load_factory), (pickle, "load", refusing_factory("holds a pickled object")),
            (pickle, "loads", refusing_factory("holds a pickled object")),
            (torch._C, "_pickle_load_obj", refusing_factory("holds a pickled TorchScript object")),  # noqa: SLF001
            (sympy, "sympify", sympify_factory)]


def _install() -> None:
    for owner, name, factory in _wrappers():
        original = getattr(owner, name)
        wrapper = factory(original)
        setattr(owner, name, wrapper)
        _patched.append((owner, name, original, wrapper))


def _uninstall() -> None:
    while _patched:
        owner, name, original, wrapper = _patched.pop()
        if getattr(owner, name) is wrapper:  # someone patched it after us: leave theirs
            setattr(owner, name, original)


@contextlib.contextmanager
def no_code_loading(path: str | os.PathLike | None = None) -> Iterator[None]:
    """A block in which this thread loads no code: ``torch.load`` runs with
    ``weights_only=True`` (asking for ``False`` raises), ``pickle.load``/``loads`` and torch's
    C++ unpickler raise, and ``sympy.sympify`` parses only arithmetic. Other threads are not
    affected. ``path`` names the file in the messages.

    Raises:
        UnsafeFileError: inside the block, where the file asked for one of those.
    """
    global _users
    with _lock:
        if _users == 0:
            _install()
        _users += 1
    _local.depth = getattr(_local, "depth", 0) + 1
    previous = getattr(_local, "path", None)
    _local.path = str(path) if path is not None else previous
    try:
        yield
    finally:
        _local.depth -= 1
        _local.path = previous
        with _lock:
            _users -= 1
            if _users == 0:
                _uninstall()
