"""Lazy access to the native extension ``indis._C`` (built from csrc/ by CMake).

Importing this module never imports ``indis._C``; the first call to
:func:`native_available`, :func:`load` or :func:`build_info` tries once and
remembers the outcome, so ``import indis`` works without a built extension.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

BUILD_HINT = (
    "Build it from the repository root with:\n"
    "    pip install torch==2.13.0 pybind11 cmake ninja setuptools wheel\n"
    "    pip install --no-build-isolation -e .\n"
    "(set INDIS_CUDA=0 to build without CUDA; add -v to see the compiler output)"
)

_module: ModuleType | None = None
_error: BaseException | None = None


def _try_load() -> None:
    global _module, _error
    if _module is not None or _error is not None:
        return
    try:
        import torch  # noqa: F401  (loads libtorch/libc10, which _C links against)

        _module = importlib.import_module("indis._C")
    except Exception as e:  # ImportError, OSError from the dynamic loader, ...
        _error = e


def native_available() -> bool:
    """True if ``indis._C`` can be imported."""
    _try_load()
    return _module is not None


def load_error() -> str | None:
    """Why ``indis._C`` could not be imported (``None`` if it can)."""
    _try_load()
    return None if _error is None else f"{type(_error).__name__}: {_error}"


def load() -> ModuleType:
    """Return the ``indis._C`` module, or raise ImportError explaining how to build it."""
    _try_load()
    if _module is None:
        raise ImportError(
            f"The INDIS native extension indis._C could not be imported ({load_error()}).\n{BUILD_HINT}"
        ) from _error
    return _module


def build_info() -> dict[str, Any]:
    """``indis._C.build_info()``: how the extension was built (cuda, openmp, torch_version, ...).

    Raises ImportError (see :func:`load`) when the extension is not available.
    """
    return dict(load().build_info())
