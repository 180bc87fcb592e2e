"""The ``fedgenome`` command line: one typer app, subcommands beside the code they drive."""

from __future__ import annotations

import errno
import logging
import sys
from typing import Annotated

import click
import typer

from fedgenome import (
    cmd_benchmark,
    cmd_client,
    cmd_data,
    cmd_fed,
    cmd_model,
    cmd_pki,
    cmd_privacy,
    cmd_report,
    cmd_runs,
)
from fedgenome.cli_options import MARKUP
from fedgenome.cli_signals import was_terminated
from fedgenome.cmd_audit import audit_app
from fedgenome.configs.errors import FedGenomeError

log = logging.getLogger("fedgenome")
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM}
GLOBAL_FLAGS = ("-v", "--verbose", "-q", "--quiet")
"""The root's flags that may also follow the subcommand (``fedgenome client start -v``)."""

app = typer.Typer(
    name="fedgenome",
    help="Federated, differentially private training of a genome language model across hospitals.",
    no_args_is_help=True,
    rich_markup_mode=MARKUP,
    context_settings={"help_option_names": ["-h", "--help"]},  # every subcommand inherits -h
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
)
app.add_typer(cmd_data.app, name="data")
app.add_typer(cmd_privacy.app, name="privacy")
app.command("pretrain")(cmd_model.pretrain_command)
app.command("train")(cmd_model.train_command)
app.command("eval")(cmd_model.eval_command)
app.command("score")(cmd_model.score_command)
app.command("explain")(cmd_model.explain_command)
app.add_typer(cmd_benchmark.app, name="benchmark")
app.command("report")(cmd_report.report_command)
app.command("demo")(cmd_fed.demo_command)
app.command("run")(cmd_fed.run_command)
app.add_typer(cmd_runs.app, name="runs")
app.add_typer(cmd_fed.server_app, name="server")
app.add_typer(cmd_client.app, name="client")
app.add_typer(cmd_pki.app, name="pki")
app.add_typer(audit_app, name="audit")


def installed_version() -> str:
    """The installed fedgenome's version (its distribution metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedgenome")
    except PackageNotFoundError:  # pragma: no cover - only when run from an uninstalled tree
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fedgenome {installed_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")] = False,
    version: Annotated[bool, typer.Option("--version", "-V", help="Print the version and exit.",
                                          callback=_print_version, is_eager=True)] = False,
) -> None:
    """Federated, differentially private training of a genome language model across hospitals."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.getLogger().setLevel(level)


def configure_logging() -> None:
    """Log to stderr through rich, at INFO unless -v or -q says otherwise."""
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False,
                          rich_tracebacks=False)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler], force=True)
    for noisy in ("flwr", "opacus", "matplotlib"):  # names only: matplotlib is optional
        logging.getLogger(noisy).setLevel(logging.WARNING)


def hoist_global_flags(args: list[str]) -> list[str]:
    """``args`` with the :data:`GLOBAL_FLAGS` moved in front of the subcommand, where typer reads them.

    Only before a ``--`` (after it every word is an argument); no subcommand has options of those names.
    """
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every known failure ends as one line on stderr and a non-zero exit."""
    configure_logging()
    try:
        args = hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
        code = app(args=args, prog_name="fedgenome", standalone_mode=False, obj={"argv": args})
    except FedGenomeError as exc:
        typer.echo(f"fedgenome: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.BadParameter as exc:  # a value not among the choices, of the wrong type, missing
        typer.echo(f"fedgenome: error: {exc.format_message()} (see --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        typer.echo(f"fedgenome: error: {where}{exc.strerror or exc}; free some space or fix the "
                   "permissions, then run again", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, click.Abort):
        code = 130
    if code == 130:  # typer returns 130 for an interrupt it caught
        terminated = was_terminated()
        typer.echo(f"fedgenome: {'terminated' if terminated else 'interrupted'}", err=True)
        sys.exit(143 if terminated else 130)
    sys.exit(code if isinstance(code, int) else 0)
