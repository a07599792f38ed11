"""The catalogue `vcpureq check` runs: protocols x scenarios, each with its expected verdict.

A :class:`Case` is one model-checking job: a protocol (an architecture or one of its
variants) run on one scenario, under one memory model, with the verdict the catalogue
expects (``"verified"``, or ``"counterexample"`` naming the property that must break).
Built-in variants that reproduce historical bugs expect a counterexample; a surprise in
either direction is an *unexpected* verdict and makes `vcpureq check` fail.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import Violation

VERIFIED = "verified"
COUNTEREXAMPLE = "counterexample"


@dataclass(frozen=True)
class Case:
    protocol: str
    scenario: str
    program: Callable[[], Any]
    memory_model: str = "sc"
    expect: str = VERIFIED
    expect_property: str | None = None  # words that the violation message must contain
    description: str = ""
    vcpus: int = 2
    max_steps: int = 10_000
    tags: tuple[str, ...] = field(default_factory=tuple)
    #: an optional account of a counterexample in words (the steps that matter, in
    #: order), printed by the reports under the violation
    explain: Callable[[Violation], str] | None = None

    @property
    def name(self) -> str:
        return f"{self.protocol}/{self.scenario}"


# Modules that contribute built-in cases through a ``cases(vcpus=None)`` function.
_PROVIDERS = (
    "vcpureq.scenarios",
)


#: Which built-in cases: "default" (what `vcpureq check` runs: a few minutes), "big" (the
#: configurations that take minutes each; bench/hosts.py, bench/s390x_bigger.py) or "all".
CASE_SETS = ("default", "big", "all")


def builtin_cases(vcpus: int | None = None, which: str = "default") -> list[Case]:
    if which not in CASE_SETS:
        raise ValueError(f"unknown case set {which!r}; available: {', '.join(CASE_SETS)}")
    out: list[Case] = []
    for modname in _PROVIDERS:
        mod = importlib.import_module(modname)
        provider = getattr(mod, "cases", None)
        if provider is None:
            continue
        out.extend(provider(vcpus=vcpus, which=which))
    return out


class LoadError(Exception):
    """A user's protocol or program file that cannot be used, with the reason."""


def load_object(spec: str) -> Any:
    """Load ``FILE.py:NAME`` (or ``package.module:NAME``) and return the object."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise LoadError(f"{spec!r}: expected FILE.py:NAME (e.g. my_variant.py:MyArch)")
    if path.endswith(".py") or "/" in path:
        file = Path(path)
        if not file.is_file():
            raise LoadError(f"{spec!r}: no such file {file}")
        modname = f"vcpureq_user_{abs(hash(str(file.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(modname, file)
        if module_spec is None or module_spec.loader is None:
            raise LoadError(f"{spec!r}: cannot load {file} as Python")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[modname] = module
        try:
            module_spec.loader.exec_module(module)
        except SyntaxError as e:
            raise LoadError(f"{file}:{e.lineno}: syntax error: {e.msg}") from None
        except Exception as e:  # noqa: BLE001 - any error in user code is reported
            raise LoadError(f"{file}: importing it raised {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(path)
        except ImportError as e:
            raise LoadError(f"{spec!r}: cannot import {path}: {e}") from None
    try:
        return getattr(module, name)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise LoadError(
            f"{spec!r}: {path} has no {name!r} (it defines: {', '.join(public) or 'nothing'})"
        ) from None


def user_cases(spec: str, vcpus: int | None = None) -> list[Case]:
    """Cases for a user's ``FILE.py:NAME``.

    NAME may be a zero-argument program (checked as it is), a list of :class:`Case`, or
    anything the scenarios know how to run (an architecture class or instance): then every
    built-in scenario that applies to it is run, expecting it to be verified."""
    obj = load_object(spec)
    label = spec.rpartition(":")[2]
    if isinstance(obj, Case):
        return [obj]
    if isinstance(obj, Iterable) and not isinstance(obj, str | bytes):
        items = list(obj)
        if all(isinstance(c, Case) for c in items):
            return items
    from . import scenarios

    adapter = getattr(scenarios, "cases_for_protocol", None)
    if adapter is not None:
        found = adapter(obj, label, vcpus=vcpus)
        if found:
            return list(found)
    if callable(obj) and not isinstance(obj, type):
        return [Case(protocol=label, scenario="program", program=obj,
                     description=f"user program {spec}")]
    raise LoadError(
        f"{spec!r}: {label} is neither a program (a zero-argument callable), a Case, "
        "nor an architecture the scenarios can run"
    )
