"""Example programs for :mod:`vcpureq.model`: classic concurrency puzzles and DPOR benchmarks.

:data:`vcpureq.examples.classic.REGISTRY` maps a name to ``(factory, description)``; see
:func:`vcpureq.examples.classic.make`.
"""

from .classic import REGISTRY, make

__all__ = ["REGISTRY", "make"]
