"""``fedgenome privacy``: the ε a training run spends, the noise that meets a budget, and ledger resets."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from fedgenome.cli_choices import NameChoice
from fedgenome.cli_options import MARKUP, Json_
from fedgenome.privacy.accounting import ACCOUNTANTS, check_arguments, epsilon, plan_noise_multiplier
from fedgenome.privacy.mechanism import Mechanism

app = typer.Typer(
    name="privacy",
    help="Privacy accounting: the (ε, δ) of subsampled-Gaussian training, noise planning, and "
         "starting a lost ledger over on record.",
    no_args_is_help=True, rich_markup_mode=MARKUP,
)

# Ranges are checked by fedgenome.privacy.accounting.check_arguments (one-line ConfigError),
# not by typer's min/max.
SampleRate = Annotated[
    float, typer.Option("--sample-rate", help="Poisson sampling rate q per step, in (0, 1].")
]
Steps = Annotated[int, typer.Option("--steps", help="Total number of steps (rounds x local steps), >= 0.")]
Delta = Annotated[float, typer.Option("--delta", help="The δ of (ε, δ)-DP, in (0, 1); e.g. 1e-5.")]

Accountant = Annotated[str, typer.Option("--accountant", help="The privacy accountant.",
                                         click_type=NameChoice(sorted(ACCOUNTANTS)))]


@app.command("epsilon")
def epsilon_command(
    noise_multiplier: Annotated[
        float,
        typer.Option("--noise-multiplier", help="Noise standard deviation over the clipping norm, >= 0."),
    ],
    sample_rate: SampleRate,
    steps: Steps,
    delta: Delta,
    accountant: Accountant = "rdp",
    json_out: Json_ = False,
) -> None:
    """Print the ε spent by STEPS steps of the subsampled Gaussian mechanism."""
    check_arguments(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
    eps = epsilon(history=[Mechanism(noise_multiplier, sample_rate, steps)], delta=delta,
                  accountant=accountant)
    if json_out:
        _echo_json(epsilon=eps, accountant=accountant, noise_multiplier=noise_multiplier,
                   sample_rate=sample_rate, steps=steps, delta=delta)
        return
    typer.echo(f"epsilon = {eps:.4f} ({accountant}, sigma={noise_multiplier:g}, q={sample_rate:g}, "
               f"steps={steps}, delta={delta:g})")


@app.command("plan")
def plan_command(
    target_epsilon: Annotated[float, typer.Option("--target-epsilon", help="The ε budget, > 0.")],
    delta: Delta,
    sample_rate: SampleRate,
    steps: Steps,
    accountant: Accountant = "rdp",
    json_out: Json_ = False,
) -> None:
    """Print the noise multiplier that keeps ε within the target, and the ε it reaches.

    The noise multiplier is rounded up to 4 decimals (more noise), and the ε shown is the one at the
    printed value, so it never exceeds the target.
    """
    sigma = plan_noise_multiplier(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate,
                                  steps=steps, accountant=accountant)
    shown = math.ceil(sigma * 1e4) / 1e4
    eps = epsilon(history=[Mechanism(shown, sample_rate, steps)], delta=delta, accountant=accountant)
    if json_out:
        _echo_json(noise_multiplier=shown, epsilon=eps, target_epsilon=target_epsilon,
                   accountant=accountant, sample_rate=sample_rate, steps=steps, delta=delta)
        return
    typer.echo(f"noise_multiplier = {shown:.4f} reaches epsilon = {eps:.4f} (target {target_epsilon:g}, "
               f"{accountant}, q={sample_rate:g}, steps={steps}, delta={delta:g})")


def _echo_json(**fields: object) -> None:
    """One JSON object to stdout (``--json``); an infinite ε is written as null."""
    typer.echo(json.dumps({k: None if isinstance(v, float) and math.isinf(v) else v
                           for k, v in fields.items()}))


@app.command("reset")
def reset_command(
    site: Annotated[Path, typer.Argument(help="The site directory (its site.toml names the site).")],
    reason: Annotated[str, typer.Option("--reason", help="Why the ledger is started over; signed into "
                                        "the new ledger's first entry and shown by every audit.")],
    privacy_state: Annotated[Path | None, typer.Option(
        help="The ledger's directory, when it is not the site's state/ (as for 'train --privacy-state').",
    )] = None,
) -> None:
    """Start a lost ledger over: a new ledger whose first entry is a signed reset naming REASON.

    Only for a site whose ledger is gone or does not verify (a site that trained before refuses to
    train without it). Whatever is left of the old ledger is kept under a .lost-<time> name.
    """
    from fedgenome.configs.schema import load_site_manifest
    from fedgenome.privacy.ledger.reset import reset_site_ledger

    name = load_site_manifest(site).name
    done = reset_site_ledger(site, name, reason=reason, state_dir=privacy_state)
    old = ("lost" if done.previous is None
           else f"{done.previous[0]} entries, last {done.previous[1][:16]}... ({done.previous_source})")
    typer.echo(f"{done.ledger}: new ledger started on record (reset, entry 0); old ledger: {old}; "
               f"reason: {done.entry.reason}")
    for path in done.moved_aside:
        typer.echo(f"kept what was left of the old ledger as {path}")
