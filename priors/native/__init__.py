"""The per-token step of a Llama prior in C++ (``token_step.cpp``), built on first use.

:func:`native_step` compiles ``token_step.cpp`` once per machine with
``torch.utils.cpp_extension`` (a C++ compiler and ``ninja``; about 30 s on the project's
2-core CPU) into ``~/.cache/lass/native/<key>`` (``LASS_NATIVE_DIR`` overrides the root),
keyed by the source, the torch version and the CPU (it is compiled for the CPU it runs on),
and loads it as ``torch.ops.lass_native.token_step``. :class:`priors.llama.LlamaStepper`
uses it for float32 steps on a CPU with one key/value head, where it builds; otherwise the
TorchScript step runs (:func:`native_error` says why it did not build).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

SOURCE = Path(__file__).with_name("token_step.cpp")
# -fopenmp: at::parallel_for runs on OpenMP; the library then needs libgomp.so.1, which
# resolves to the copy torch has loaded already (one runtime, torch's threads)
FLAGS = ["-O3", "-march=native", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]


def _cpu_key() -> str:
    """What the compiled code depends on besides the source: the CPU's flags and model."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("flags", "model name"))}))
    except OSError:
        return platform.processor()


STAMP = "built"  # written beside the library once it has been built and loaded


class NativeLibrary:
    """A C++ operator library compiled once per machine from one source file and loaded
    into ``torch.ops``: the prior step here, and the search's beam choice in
    :mod:`lass.native`.

    Args:
        name: the shared library's name (``<name>.so``).
        source: the ``.cpp`` file (it registers its operators with ``TORCH_LIBRARY``).
        namespace: the ``torch.ops`` namespace its operators are registered in.
        what: how a message names it.
    """

    def __init__(self, name: str, source: Path, namespace: str, what: str) -> None:
        self.name, self.source, self.namespace, self.what = name, source, namespace, what
        self._error: list[str] = []
        self._loaded: list[Any] = []

    def build_dir(self) -> Path:
        """Where this machine's build lives: ``LASS_NATIVE_DIR`` (or
        ``~/.cache/lass/native``) / a key of the source, torch, flags, CPU and Python."""
        key = hashlib.sha256("\0".join([self.source.read_text(), torch.__version__,
                                        " ".join(FLAGS + LINK_FLAGS), _cpu_key(),
                                        sys.version]).encode()).hexdigest()[:16]
        root = Path(os.environ.get("LASS_NATIVE_DIR")
                    or Path.home() / ".cache" / "lass" / "native")
        return root / key

    def ops(self) -> Any:
        """The ``torch.ops`` namespace, built if need be, or None where it cannot be built or
        loaded (no compiler, no ``ninja``, not Linux/x86, a failed build): then
        :meth:`error` gives the reason. Tried once per process.

        A build that has loaded once before (its folder holds the library and :data:`STAMP`;
        the folder's name covers the source) is loaded directly, in about 15 ms, without
        importing ``torch.utils.cpp_extension`` or running ``ninja`` (about 130 ms)."""
        if self._loaded or self._error:
            return self._loaded[0] if self._loaded else None
        where = self.build_dir()
        library, stamp = where / f"{self.name}.so", where / STAMP
        if library.exists() and stamp.exists():
            try:
                torch.ops.load_library(str(library))
                self._loaded.append(getattr(torch.ops, self.namespace))
                return self._loaded[0]
            except (OSError, RuntimeError):  # a damaged library: build it again
                stamp.unlink(missing_ok=True)
                library.unlink(missing_ok=True)  # (else ninja would take it as up to date)
        try:
            from torch.utils.cpp_extension import load

            where.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            if not library.exists():
                print(f"lass: compiling {self.what} once for this machine into {where} (about "
                      f"30 s; the install command does it ahead of time)", file=sys.stderr)
            # compiled from a copy in the build folder: the same path from every checkout of
            # the same source (ninja rebuilds when the path in its build file changes)
            source = where / self.source.name
            text = self.source.read_text()
            if not source.exists() or source.read_text() != text:
                part = source.with_suffix(f".{os.getpid()}.tmp")
                part.write_text(text)
                os.replace(part, source)
            # (copies: load() adds to the lists it is given, which would change the key)
            load(self.name, sources=[str(source)], extra_cflags=list(FLAGS),
                 extra_ldflags=list(LINK_FLAGS), build_directory=str(where),
                 is_python_module=False, verbose=False)
            self._loaded.append(getattr(torch.ops, self.namespace))
            stamp.write_text(f"{library.name} loaded\n")
            if time.perf_counter() - started > 2.0:
                print(f"lass: {self.what} compiled in {time.perf_counter() - started:.0f} s",
                      file=sys.stderr)
            return self._loaded[0]
        except Exception as err:  # whatever the build raises: the caller's fallback runs
            self._error.append(str(err).strip().splitlines()[-1] if str(err).strip()
                               else repr(err))
            return None

    def loaded(self) -> Any:
        """The ``torch.ops`` namespace if :meth:`ops` has loaded it in this process, else
        None; never builds."""
        return self._loaded[0] if self._loaded else None

    def error(self) -> str | None:
        """Why :meth:`ops` gave None (None if it built or was not tried)."""
        return self._error[-1] if self._error else None


STEP = NativeLibrary("lass_native_step", SOURCE, "lass_native", "the native prior step")


def build_dir() -> Path:
    """Where this machine's build of the step lives."""
    return STEP.build_dir()


def native_step() -> Any:
    """``torch.ops.lass_native.token_step``, built if need be, or None where it cannot be
    built or loaded: then :func:`native_error` gives the reason."""
    ops = STEP.ops()
    return None if ops is None else ops.token_step


def loaded() -> Any:
    """``torch.ops.lass_native`` (``token_step``, ``copy_rows``, ``brgemm_works``) if
    :func:`native_step` has built and loaded it in this process, else None; never builds."""
    return STEP.loaded()


def native_error() -> str | None:
    """Why :func:`native_step` gave None (None if it built or was not tried)."""
    return STEP.error()
