"""``helios-pipeline``: render, plan and doctor from the command line.

Exit codes: 0 done, 2 invalid input (nothing rendered), 1 render failure, 130 cancelled (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from helios_pipeline.engine.errors import RenderCancelled, RenderError
from helios_pipeline.orchestrator import RenderOrchestrator, resolve_spec, run_plan
from helios_pipeline.plan import plan as make_plan
from helios_pipeline.preflight import check_inputs
from helios_pipeline.spec import RenderSpec, SpecError

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 130
err = Console(stderr=True)


def _report(label: str, style: str, message: object) -> None:
    """One error report on stderr: a coloured label, then the message verbatim.

    Never wrapped (paths and URLs stay whole, one problem per line) and never read as rich markup.
    """
    err.print(Text.assemble((label, style), f": {message}"), soft_wrap=True, highlight=False)


def _composition_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options given as flags; with a spec file they override its keys."""
    options: dict[str, Any] = {}
    for flag, key in (
        ("width", "width"),
        ("height", "height"),
        ("fps", "fps"),
        ("duration", "duration_in_seconds"),
        ("frames", "frame_count"),
        ("start_frame", "start_frame"),
        ("concurrency", "concurrency"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            options[key] = value
    return options


def _spec_from_args(args: argparse.Namespace) -> RenderSpec:
    return resolve_spec(args.source, args.output, _composition_options(args), args.set or [])


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a render spec (.yaml/.json), or a composition URL, .html file or folder")
    parser.add_argument("-o", "--output", help="output video (default: out/<name>.mp4 beside the spec)")
    parser.add_argument("--concurrency", type=int, help="number of chunks rendered in parallel")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec key (repeatable)")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--fps", type=float)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float, help="seconds")
    length.add_argument("--frames", type=int, help="exact number of frames")
    parser.add_argument("--start-frame", type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helios-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="render a composition to a video")
    _add_spec_arguments(render)
    render.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    plan = commands.add_parser("plan", help="print the render plan as JSON")
    _add_spec_arguments(plan)
    commands.add_parser("doctor", help="check Chromium, FFmpeg and codecs")
    return parser


def cmd_plan(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    print(json.dumps(json.loads(make_plan(spec).model_dump_json()), indent=2))
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    check_inputs(spec)
    render_plan = make_plan(spec)
    total = render_plan.total_frames
    cancel = threading.Event()
    columns = (
        TextColumn(f"[bold]{spec.name}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TextColumn("{task.fields[fps]:>6.1f} fps"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, disable=args.quiet, transient=False) as bar:
        task = bar.add_task("render", total=total, fps=0.0)

        def on_progress(fraction: float) -> None:
            frames = round(fraction * total)
            elapsed = bar.tasks[task].elapsed or 0.0
            bar.update(task, completed=frames, fps=frames / elapsed if elapsed > 0 else 0.0)

        try:
            result = run_plan(render_plan, on_progress=on_progress, cancel=cancel)
        except KeyboardInterrupt:
            cancel.set()
            err.print("[yellow]cancelled[/]: no output written, temporary files removed")
            return EXIT_CANCELLED
    err.print(
        f"[green]done[/] {result.output}  {total} frames in {result.seconds:.1f} s "
        f"({total / result.seconds:.1f} fps, {len(result.chunks)} chunks)"
    )
    return EXIT_OK


def cmd_doctor(_args: argparse.Namespace) -> int:
    from helios_pipeline.engine.doctor import run_checks

    checks = run_checks()
    table = Table("check", "status", "detail")
    for check in checks:
        table.add_row(check.name, "[green]ok[/]" if check.ok else "[red]missing[/]", check.detail)
    Console().print(table)
    required = {"chromium", "ffmpeg", "ffprobe", "encoder libx264", "encoder aac", "playwright"}
    return EXIT_OK if all(c.ok for c in checks if c.name in required) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"render": cmd_render, "plan": cmd_plan, "doctor": cmd_doctor}
    try:
        return handlers[args.command](args)
    except SpecError as exc:
        _report("error", "bold red", exc)
        return EXIT_INVALID
    except RenderCancelled as exc:
        _report("cancelled", "yellow", exc)
        return EXIT_CANCELLED
    except RenderError as exc:
        _report("render failed", "bold red", exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["RenderOrchestrator", "main"]
