"""`backend-fab`: the command line. Arguments are parsed before any heavy import.

Exit codes: 0 done; 1 done, but some inputs (files, lots) failed; 2 could not run (bad options,
lake locked or unreadable). ``main(argv=None) -> int`` so tests can call it directly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from backend_fab import __version__
from backend_fab.errors import BackendFabError

app = typer.Typer(
    name="backend-fab",
    help=(
        "Back-end semiconductor yield analytics: ingest STDF and assembly data into a Delta lake, "
        "score lots nightly (yield, SYL/SBL, PAT, clusters, patterns) and write an HTML report."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"backend-fab {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Back-end semiconductor yield analytics."""


# --- synth / demo (backend_fab.synth) ------------------------------------------------------------


@app.command()
def synth(
    scenario: Annotated[
        str, typer.Option(help="Scenario name in datasets/ (ci, demo, bench-day).")
    ] = "ci",
    out: Annotated[Path, typer.Option(help="Output folder (a lake, plus stdf/ files).")] = Path(
        "synth-out"
    ),
    seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
    stdf: Annotated[bool, typer.Option(help="Also write the tester data as STDF files.")] = True,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Threads generating runs ahead of the writer (default: the cores, at most 4); "
            "the output does not depend on it.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Generate a synthetic fab with ground truth (deterministic for a seed)."""
    from backend_fab.synth.cli import synth_command

    raise typer.Exit(
        synth_command(
            scenario=scenario, out=out, seed=seed, stdf=stdf, workers=workers, quiet=quiet
        )
    )


@app.command()
def demo(
    lake: Annotated[Path, typer.Option(help="Lake folder to create or reuse.")] = Path("fab-lake"),
    report: Annotated[Path, typer.Option(help="Folder for the HTML report.")] = Path("fab-report"),
    scenario: Annotated[str, typer.Option(help="Scenario to generate.")] = "demo",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """The main job end to end: synthetic fab -> STDF files -> ingest -> nightly -> report."""
    from backend_fab.demo import run_demo

    raise typer.Exit(run_demo(lake=lake, report=report, scenario=scenario, quiet=quiet))


# --- ingest (backend_fab.ingest) -----------------------------------------------------------------


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (searched recursively).")],
    lake: Annotated[Path, typer.Option(help="Lake folder.")] = Path("fab-lake"),
    workers: Annotated[int, typer.Option(help="Parallel processes (spawn).")] = 2,
    max_expanded_mb: Annotated[
        int, typer.Option(help="Refuse compressed files that expand past this many MB.")
    ] = 8192,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    salvage: Annotated[
        bool, typer.Option(help="Keep what can be read of damaged STDF (runs marked salvaged).")
    ] = False,
) -> None:
    """Ingest STDF (plain, .gz, .bz2, .zip), map files and assembly data into the lake.

    Idempotent by content hash; nothing of a failed file reaches the lake; exit 1 when any file
    failed, each failure listed with its reason.
    """
    from backend_fab.ingest import ingest_command

    raise typer.Exit(
        ingest_command(
            paths=paths,
            lake=lake,
            workers=workers,
            max_expanded_mb=max_expanded_mb,
            quiet=quiet,
            salvage=salvage,
        )
    )


# --- nightly / warmup (backend_fab.nightly) ------------------------------------------------------


@app.command()
def nightly(
    lake: Annotated[Path, typer.Option(help="Lake folder.")] = Path("fab-lake"),
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe TOML (default: the built-in one).")
    ] = None,
    report: Annotated[
        Path, typer.Option(help="Folder for the night's HTML and JSON report.")
    ] = Path("fab-report"),
    since: Annotated[
        str | None, typer.Option(help="Only lots changed since (ISO date/time).")
    ] = None,
    engine: Annotated[str, typer.Option(help="local, process or dask.")] = "local",
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address.")] = None,
    workers: Annotated[int, typer.Option(help="Workers for process/dask engines.")] = 2,
    fail_on_alarm: Annotated[
        int | None, typer.Option(help="Exit 1 when an alarm of this level or higher is raised.")
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another run's lock.")] = 0.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Score every new or changed lot: yield, SYL/SBL, PAT, clusters, patterns, alarms, report."""
    from backend_fab.nightly import nightly_command

    raise typer.Exit(
        nightly_command(
            lake=lake,
            recipe=recipe,
            report=report,
            since=since,
            engine=engine,
            scheduler=scheduler,
            workers=workers,
            fail_on_alarm=fail_on_alarm,
            wait=wait,
            quiet=quiet,
        )
    )


@app.command()
def warmup(quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False) -> None:
    """Compile every numba kernel once (cached on disk), so the first real run starts fast."""
    from backend_fab.warmup import warmup_command

    raise typer.Exit(warmup_command(quiet=quiet))


# --- eval-patterns (backend_fab.patterns) --------------------------------------------------------


@app.command("eval-patterns")
def eval_patterns(
    out: Annotated[Path, typer.Option(help="Folder for figures and the JSON of figures.")] = Path(
        "pattern-eval"
    ),
    wm811k: Annotated[
        Path | None, typer.Option(help="WM-811K sample JSON (default: ../shared/data/wm811k).")
    ] = None,
    folds: Annotated[int, typer.Option(help="Lot-disjoint cross-validation folds.")] = 5,
    seed: Annotated[int, typer.Option()] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Evaluate the wafer-pattern classifier: lot-disjoint CV on synthetic maps, and real maps."""
    from backend_fab.patterns.evaluate import eval_patterns_command

    raise typer.Exit(
        eval_patterns_command(out=out, wm811k=wm811k, folds=folds, seed=seed, quiet=quiet)
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of exiting (tests call this)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # click returns (not raises) the code of a typer.Exit when standalone_mode is off
        rc = app(args=args, prog_name="backend-fab", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except SystemExit as exc:  # click's own exits (--help)
        return int(exc.code or 0)
    except BackendFabError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return 2
        if isinstance(exc, click.exceptions.Abort):
            return 2
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
