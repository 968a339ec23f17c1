"""How the Dagster run config meets the library's specs: one overlay rule for every asset.

The library's frozen dataclasses own every default (`TrainSpec`, `EvalSpec`, `SampleSpec`, the
data stages' specs). A Dagster `Config` field is None when the user did not set it, and only the
fields that were set are laid over the spec's defaults. Dagster's config schema cannot express
"one of these strings, or unset" (`Optional[Literal[...]]`), so a closed choice is a `Literal`
whose default is read from the library here (`library_default`), never written a second time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dagster import Config


def library_default(spec_class: type, name: str) -> Any:
    """The default of dataclass field `name` of `spec_class` (the value the library owns)."""
    for field in dataclasses.fields(spec_class):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            raise ValueError(f"{spec_class.__name__}.{name} has no default to offer a config field")
    raise ValueError(f"{spec_class.__name__} has no field {name!r}")


def given_fields(config: Config, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of `config` that were set (not None), minus `exclude`, as plain values.

    Lists become tuples: the frozen specs hold tuples (hashable, like `JsonSpec.from_json` reads them).
    """
    return {k: tuple(v) if isinstance(v, list) else v
            for k, v in config.model_dump().items() if v is not None and k not in exclude}
