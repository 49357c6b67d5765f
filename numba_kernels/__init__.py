"""Numba kernels (``cpu/``, ``cuda/``) and their on-disk cache policy: the cache is an optimization,
never a requirement.

Every CPU kernel here (``cpu/``) is declared ``cache=True`` (the CUDA ones, built by factories per
configuration, compile on first use in each process). Numba refuses that outright when it finds no
writable cache directory (read-only install, unwritable HOME, a read-only NUMBA_CACHE_DIR even
when it already holds the compiled kernels: ``RuntimeError: cannot cache function ... no locator
available``, at import), and a corrupted or truncated cache file makes the first call die with an
``UnpicklingError``/``EOFError``. Importing this package makes both fall back to compiling without
the cache, with one warning line per process saying why. Only functions defined in this package
are affected; numba's behaviour for anyone else's code is unchanged.
"""
from __future__ import annotations

import warnings

_warned = False


def _warn_once(reason: str) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    reason = " ".join(str(reason).split())  # one line
    # warn_explicit with a pseudo file name: printed as exactly one line (no source line echoed)
    warnings.warn_explicit(f"numba cache unusable ({reason}); compiling without the cache",
                           RuntimeWarning, filename="numba_kernels", lineno=0)


class _GuardedCache:
    """numba's per-function cache; any failure to read or write it switches caching off for
    that function (the kernel is then compiled in memory), warning once per process."""

    def __init__(self, cache):
        self._inner = cache
        self._off = False

    def _disable(self, e: BaseException) -> None:
        self._off = True
        _warn_once(f"{type(e).__name__}: {e} [cache {getattr(self._inner, 'cache_path', '?')}]")

    def load_overload(self, sig, target_context):
        if self._off:
            return None
        try:
            return self._inner.load_overload(sig, target_context)
        except Exception as e:  # UnpicklingError, EOFError, OSError, ValueError...: a bad cache file
            self._disable(e)
            return None

    def save_overload(self, sig, data):
        if self._off:
            return
        try:
            self._inner.save_overload(sig, data)
        except Exception as e:  # read-only or full disk, or an unreadable index to merge into
            self._disable(e)

    def __getattr__(self, name):
        if name == "_inner":  # not yet set (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)


def _ours(py_func) -> bool:
    mod = getattr(py_func, "__module__", None) or ""
    return mod == __name__ or mod.startswith(__name__ + ".")


def _install_cache_fallback() -> None:
    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # no numba: the kernel modules will say so when imported
        return
    orig = getattr(Dispatcher, "enable_caching", None)
    if orig is None or getattr(orig, "_kbit_guarded", False):
        return

    def enable_caching(self):
        if not _ours(getattr(self, "py_func", None)):
            return orig(self)
        try:
            orig(self)
        except RuntimeError as e:  # no usable cache directory: keep the NullCache numba set up
            from numba.core import config
            _warn_once(f"no writable cache directory: NUMBA_CACHE_DIR={config.CACHE_DIR or '(unset)'}, the "
                       f"kernels' __pycache__ and the user cache dir are all read-only or missing; {e}")
            return
        self._cache = _GuardedCache(self._cache)

    enable_caching._kbit_guarded = True
    enable_caching.__doc__ = orig.__doc__
    Dispatcher.enable_caching = enable_caching


_install_cache_fallback()
