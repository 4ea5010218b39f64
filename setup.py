"""The oracle's native kernels, built with the package when a C compiler is there.

Metadata lives in pyproject.toml and the package layout in setup.cfg; this file only adds the
optional extension. ``torchzo/oracle/kernels.c`` becomes one shared library (every instruction
set's variant inside, picked at run time) that ``torchzo.oracle.kernels`` loads with ctypes.
Beside it goes a record of its sha256, its source's and its compile command, so that a
truncated or replaced file is refused rather than loaded. A failed build (no compiler, say)
leaves the package on torch ops, which give the same results: it never fails the install.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = "torchzo/oracle/kernels.c"
# -ffp-contract=off keeps the compiler from fusing what the source keeps apart (the Gaussian
# stream's bits depend on it: torch ops round every product); -fno-math-errno lets sqrtf be
# the instruction (its argument is never negative). torchzo.oracle.kernel_build.CFLAGS: the
# same.
CFLAGS = ["-O3", "-funroll-loops", "-std=c11", "-ffp-contract=off", "-fno-math-errno"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class OptionalBuildExt(build_ext):
    """build_ext that records each library it builds and warns, not fails, when it cannot."""

    def build_extension(self, ext: Extension) -> None:
        target = Path(self.get_ext_fullpath(ext.name))
        try:
            super().build_extension(ext)
            self._record(ext, target)
        except Exception as err:  # any failure, the record's too: torch ops, not a failed install
            for path in (target, target.with_suffix(".json")):
                path.unlink(missing_ok=True)
            self.warn(f"torchzo: the native kernels were not built ({err}); torchzo will run "
                      "its Rademacher queries on torch ops (the same results, slower)")

    def copy_extensions_to_source(self) -> None:  # editable installs: the source tree's copy
        super().copy_extensions_to_source()
        for ext in self.extensions:
            target = Path(self.get_ext_fullpath(ext.name))
            if target.exists():
                self._record(ext, target)

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        return outputs + [str(Path(p).with_suffix(".json")) for p in outputs
                          if Path(p).name.startswith("_kernels")]

    def _record(self, ext: Extension, target: Path) -> None:
        command = [*self.compiler.compiler_so, *ext.extra_compile_args, "-c", SOURCE]
        record = {"sha256": _digest(target), "source_sha256": _digest(Path(SOURCE)),
                  "command": " ".join(command)}
        target.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")


setup(
    ext_modules=[Extension("torchzo.oracle._kernels", [SOURCE], extra_compile_args=CFLAGS,
                           libraries=["m"],
                           optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)
