"""Build the generated part of the documentation: ``docs/api.md`` from the docstrings.

    python docs/build.py            # rewrite docs/api.md
    python docs/build.py --check    # exit 1 if docs/api.md is out of date (run by the tests)

The reference lists every public name (each module's ``__all__``) with its signature and
docstring, and the public methods of classes. The hand-written pages link into it.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

MODULES = ["torchzo", "torchzo.optim", "torchzo.oracle", "torchzo.learned", "torchzo.meta",
           "torchzo.tasks", "torchzo.pretrained", "torchzo.datasets", "torchzo.attack",
           "torchzo.recorder", "torchzo.progress", "torchzo.plot", "torchzo.cpu"]
OUT = Path(__file__).resolve().parent / "api.md"


def _signature(obj: object) -> str:
    try:
        sig = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return re.sub(r" at 0x[0-9a-f]+", "", sig)  # object reprs must not change between builds


def _doc(obj: object) -> str:
    return inspect.getdoc(obj) or "*(no docstring)*"


def _own_methods(cls: type) -> list[tuple[str, object]]:
    """Public methods defined by ``cls`` itself (inherited torch.optim ones are documented
    there)."""
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        # torch.optim patches ``step`` onto each optimizer class on first construction: a
        # wrapper around an inherited step is not this class's own method.
        value = getattr(value, "__wrapped__", value) if getattr(value, "hooked", False) else value
        if inspect.isfunction(value) and not value.__qualname__.startswith(f"{cls.__name__}."):
            continue
        if inspect.isfunction(value) and (name != "__init__" or value.__doc__):
            out.append((name, value))
        elif isinstance(value, property) and value.__doc__:
            out.append((name, value))
    return out


def render() -> str:
    lines = ["# API reference", "",
             "Generated from the docstrings by `python docs/build.py`; do not edit by hand.", ""]
    seen: set[int] = set()
    for modname in MODULES:
        module = importlib.import_module(modname)
        lines += [f"## `{modname}`", "", _doc(module).split("\n\n")[0], ""]
        for name in sorted(getattr(module, "__all__", [])):
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                lines += [f"- `{modname}.{name}`: see `{obj.__name__}`", ""]
                continue
            where = f"{getattr(obj, '__module__', modname)}.{getattr(obj, '__qualname__', name)}"
            if id(obj) in seen and (inspect.isclass(obj) or inspect.isfunction(obj)):
                lines += [f"- `{modname}.{name}`: the same object as `{where}` above", ""]
                continue
            seen.add(id(obj))
            if inspect.isclass(obj):
                lines += [f"### class `{modname}.{name}{_signature(obj)}`", "", _doc(obj), ""]
                for meth, value in _own_methods(obj):
                    sig = "" if isinstance(value, property) else _signature(value)
                    # getdoc on the class attribute inherits an overridden method's docstring
                    doc = _doc(value) if value.__doc__ else _doc(getattr(obj, meth))
                    lines += [f"#### `{name}.{meth}{sig}`", "", doc, ""]
            elif callable(obj):
                lines += [f"### `{modname}.{name}{_signature(obj)}`", "", _doc(obj), ""]
            else:
                lines += [f"### `{modname}.{name}`", "", f"Constant: `{obj!r}`", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if docs/api.md is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run 'python docs/build.py'", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
