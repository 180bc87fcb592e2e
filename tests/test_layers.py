"""Imports point down the layers of ``fedgenome.LAYERS``: configs ← shared ← privacy ← client/server ← top.

Read from the source (every ``import`` statement, also inside functions), so a lazy import cannot
hide a cycle.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import fedgenome

TOP = len(fedgenome.LAYERS)


def layer_of(module: str) -> int:
    """The layer of a fedgenome module name; TOP for the CLI and anything else above the layers."""
    parts = module.split(".")
    for index, layer in enumerate(fedgenome.LAYERS):
        if len(parts) > 1 and parts[1] in layer:
            return index
    return TOP


def source_files() -> dict[str, Path]:
    """Every module of fedgenome, by name, from the folders its sub-packages map to."""
    roots = {"fedgenome": Path(fedgenome.__file__).parent}
    for sub in fedgenome.MAPPED:
        roots[f"fedgenome.{sub}"] = Path(importlib.import_module(f"fedgenome.{sub}").__file__).parent
    files = {}
    for package, root in roots.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("").parts
            if package == "fedgenome" and len(rel) > 1 and rel[0] in fedgenome.MAPPED:
                continue
            name = ".".join((package, *rel)).removesuffix(".__init__")
            files[name] = path
    return files


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


FILES = source_files()


def test_every_sub_package_is_found() -> None:
    names = set(FILES)
    for sub in fedgenome.MAPPED:
        assert f"fedgenome.{sub}" in names
    assert "fedgenome.cli" in names and len(names) > 60


@pytest.mark.parametrize("name", sorted(FILES))
def test_imports_point_down(name: str) -> None:
    mine = layer_of(name)
    problems = []
    for line, target in imports(FILES[name]):
        top = target.split(".")[0]
        if top in fedgenome.MAPPED or top == "tests":
            problems.append(f"line {line}: {target} (import it as fedgenome.{target})")
        if top != "fedgenome":
            if top == "flwr" and mine <= layer_of("fedgenome.privacy") and name.split(".")[1] == "privacy":
                problems.append(f"line {line}: {target} (privacy imports no flwr)")
            continue
        theirs = layer_of(target)
        if theirs > mine:
            problems.append(f"line {line}: {target} is in a higher layer")
        elif theirs == mine < TOP and target.split(".")[1:2] != name.split(".")[1:2]:
            problems.append(f"line {line}: {target} (client and server never import each other)")
    assert not problems, f"{FILES[name]}: " + "; ".join(problems)


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from fedgenome.server.deploy import APP_DIR\n    return APP_DIR\n")
    assert imports(bad) == [(2, "fedgenome.server.deploy")]
    assert layer_of("fedgenome.server.deploy") > layer_of("fedgenome.privacy.ledger.core")
    assert layer_of("fedgenome.cli") == TOP


def is_cli(target: str) -> bool:
    """A CLI module: ``fedgenome.cli``, its helpers ``fedgenome.cli_*``, the ``fedgenome.cmd_*`` commands."""
    return target == "fedgenome.cli" or target.startswith(("fedgenome.cmd_", "fedgenome.cli.",
                                                            "fedgenome.cli_"))


def test_the_cli_check_knows_the_cli_modules() -> None:
    assert all(map(is_cli, ("fedgenome.cli", "fedgenome.cmd_audit", "fedgenome.cli_signals")))
    assert not any(map(is_cli, ("fedgenome.client.site", "fedgenome.audit.canaries", "fedgenome.cliff")))


@pytest.mark.parametrize("name", sorted(n for n in FILES if n.startswith(("fedgenome.experiments",
                                                                          "fedgenome.audit"))))
def test_experiments_and_audit_never_import_the_cli(name: str) -> None:
    cli = [f"line {line}: {target}" for line, target in imports(FILES[name]) if is_cli(target)]
    assert not cli, (f"{FILES[name]}: the CLI calls experiments and audit, never the other way: "
                     + "; ".join(cli))


@pytest.mark.parametrize("name", sorted(n for n in FILES if not is_cli(n) and n != "fedgenome.__main__"))
def test_only_the_cli_modules_build_commands(name: str) -> None:
    ui = [f"line {line}: {target}" for line, target in imports(FILES[name])
          if target.split(".")[0] in ("typer", "click")]
    assert not ui, f"{FILES[name]}: commands live in fedgenome/ (cli, cli_*, cmd_*): " + "; ".join(ui)
