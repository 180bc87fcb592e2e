"""The CLI's choice type: click's ``Choice`` over names from a registry, refused as the CLI refuses.

A bad value ends as one line (``fedgenome.cli.main`` prints every bad parameter so) naming the
valid values the way the registries' own errors do: ``valid names: a, b, c``.
"""

from __future__ import annotations

from collections.abc import Iterable

import click


class NameChoice(click.Choice[str]):
    """One of a registry's names; ``--help`` lists them as ``[a|b|c]``."""

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__(list(names))

    def get_invalid_choice_message(self, value: object, ctx: click.Context | None) -> str:
        """``'x' is not one of them; valid names: a, b, c``."""
        return f"{value!r} is not one of them; valid names: {', '.join(map(str, self.choices))}"
