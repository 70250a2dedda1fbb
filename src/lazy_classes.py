"""Subclasses of Ray's classes as module attributes, built on first use.

Ray loads a model server class or a callback by import path ("module:Name")
inside its workers, and pickles classes by reference. Those classes derive
from Ray's, so building one imports Ray; ``lazy_attributes`` gives a module a
``__getattr__`` that builds each named class once per process, names it as
the module's own attribute (so pickling finds it again), and leaves importing
the module free of Ray (llm_config, the doctor, the unit tests).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, MutableMapping


def lazy_attributes(namespace: MutableMapping[str, Any],
                    builders: Mapping[str, Callable[[], type]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (pass the module's ``globals()``) for BUILDERS' names."""

    def module_getattr(name: str) -> Any:
        if name not in builders:
            raise AttributeError(name)
        if name not in namespace:
            cls = builders[name]()
            cls.__module__, cls.__qualname__ = namespace["__name__"], name
            namespace[name] = cls
        return namespace[name]

    return module_getattr
