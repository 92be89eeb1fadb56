"""``helios-pipeline``: render (through Dagster or locally), submit, still, plan, doctor and ui.

Exit codes: 0 done, 2 invalid input (nothing rendered), 1 render failure, 130 cancelled (Ctrl-C, SIGTERM
or SIGHUP).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from helios_pipeline.dagster_defs.deployment_check import DeploymentUnreachable
from helios_pipeline.engine.errors import RenderCancelled, RenderError
from helios_pipeline.heap import long_lived_imports
from helios_pipeline.interruptible import signal_handlers
from helios_pipeline.limits import SettingError
from helios_pipeline.orchestrator import RenderOrchestrator, run_plan
from helios_pipeline.plan import plan as make_plan
from helios_pipeline.preflight import check_inputs
from helios_pipeline.spec import RenderSpec, SpecError, resolve_spec, source_label
from helios_pipeline.storage import StorageError

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 130
err = Console(stderr=True)

# The interpreter's last garbage collection at exit walks every object Dagster's definitions left: 2-6 s on a
# busy 2-core machine, after all was done, eating most of a SIGTERM's 10 s grace. Nothing left at exit needs
# collecting (files are closed, processes stopped), so it is skipped: ``gc.freeze`` exempts what exists.
atexit.register(gc.freeze)


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
    _add_composition_arguments(parser)


def _add_composition_arguments(parser: argparse.ArgumentParser) -> None:
    """``--set`` and the flags that describe a composition given without a spec file."""
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
    render.add_argument(
        "--local", action="store_true", help="render with the library orchestrator only (no Dagster runs)"
    )
    submit = commands.add_parser("submit", help="hand a render to the running Dagster deployment")
    _add_spec_arguments(submit)
    submit.add_argument("--key", help="render key (default: the spec's name)")
    ui = commands.add_parser("ui", help="start the Dagster UI and daemon for this project (like dagster dev)")
    ui.add_argument("--port", type=int, default=3000)
    ui.add_argument("--host", default="127.0.0.1")
    still = commands.add_parser("still", help="render one frame of the video as a PNG or JPEG (locally)")
    still.add_argument("source", help="a render spec (.yaml/.json), or a composition URL, .html file or folder")
    still.add_argument(
        "--frame", required=True, help="a frame of the video (75; 0 is its first) or a time in it (2.5s)"
    )
    still.add_argument("-o", "--output", required=True, help="the image to write: .png, .jpg or .jpeg")
    _add_composition_arguments(still)
    plan = commands.add_parser("plan", help="print the render plan as JSON")
    _add_spec_arguments(plan)
    commands.add_parser("doctor", help="check Chromium, FFmpeg and codecs")
    worker = commands.add_parser(
        "worker", help="start a Celery worker of the Celery + Postgres deployment (deploy/celery/)"
    )
    worker.add_argument("-n", "--name", default=None, help="worker name (default: helios-<pid>); @host is appended")
    worker.add_argument("-c", "--concurrency", type=int, default=1, help="runs (chunks) at once (default 1)")
    worker.add_argument("-y", "--config", default=None, help="worker config (default deploy/celery/worker.yaml)")
    worker.add_argument("-q", "--queue", action="append", default=[], help="Celery queue to listen on (repeatable)")
    worker.add_argument("-l", "--loglevel", default="INFO")
    status = commands.add_parser("status", help="the renders in the Dagster instance, or one render's chunks")
    status.add_argument("name", nargs="?", help="one render: its chunks with worker, wall time and error")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def cmd_plan(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    print(json.dumps(json.loads(make_plan(spec).model_dump_json()), indent=2))
    return EXIT_OK


def _progress_bar(spec: RenderSpec, quiet: bool) -> Progress:
    columns = (
        TextColumn(f"[bold]{spec.name}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TextColumn("{task.fields[fps]:>6.1f} fps"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stage]}"),
    )
    return Progress(*columns, console=err, disable=quiet, transient=False)


def cmd_render(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    check_inputs(spec, source_label(args.source))
    if args.local:
        return _render_local(spec, args.quiet)
    return _render_dagster(spec, args)


def _render_local(spec: RenderSpec, quiet: bool) -> int:
    """The library orchestrator: chunks in local worker processes, no Dagster."""
    render_plan = make_plan(spec)
    total = render_plan.total_frames
    cancel = threading.Event()
    with _progress_bar(spec, quiet) as bar:
        task = bar.add_task("render", total=total, fps=0.0, stage="")

        def on_progress(fraction: float) -> None:
            frames = round(fraction * total)
            elapsed = bar.tasks[task].elapsed or 0.0
            bar.update(task, completed=frames, fps=frames / elapsed if elapsed > 0 else 0.0)

        try:
            result = run_plan(render_plan, on_progress=on_progress, cancel=cancel)
        except KeyboardInterrupt:
            cancel.set()
            _report("cancelled", "yellow", "no output written, temporary files removed")
            return EXIT_CANCELLED
    err.print(
        f"[green]done[/] {result.output}  {total} frames in {result.seconds:.1f} s "
        f"({total / result.seconds:.1f} fps, {len(result.chunks)} chunks, "
        f"{', '.join(sorted({chunk.capture_method for chunk in result.chunks}))})",
        soft_wrap=True,
    )
    if result.blocked_note:
        _report("warning", "yellow", result.blocked_note)
    return EXIT_OK


def _render_dagster(spec: RenderSpec, args: argparse.Namespace) -> int:
    """Through the Dagster definitions and instance: one run per chunk, visible in `dagster dev`."""
    from helios_pipeline.dagster_defs.own_daemon import start_ahead, stop_unless_adopted

    ahead = start_ahead()  # before Dagster's import (~1 s), which its start then overlaps
    try:
        return _render_dagster_with(spec, args, ahead)
    finally:
        stop_unless_adopted(ahead)


def _import_dagster() -> None:
    """Import the Dagster side of ``render`` and ``submit`` (~140,000 objects of Dagster's) without the garbage
    collector's passes over it (``heap.long_lived_imports``: ~0.1 s of every render's start)."""
    with long_lived_imports():
        import helios_pipeline.dagster_defs.runner  # noqa: F401


def _render_dagster_with(spec: RenderSpec, args: argparse.Namespace, ahead: subprocess.Popen | None) -> int:
    _import_dagster()
    from helios_pipeline.dagster_defs.runner import RenderStatus, StoppedFollowing, render_through_dagster

    started = time.monotonic()
    with _progress_bar(spec, args.quiet) as bar:
        task = bar.add_task("render", total=spec.total_frames, fps=0.0, stage="submitting")

        def on_status(status: RenderStatus) -> None:
            elapsed = bar.tasks[task].elapsed or 0.0
            fps = status.frames_done / elapsed if elapsed > 0 else 0.0
            bar.update(task, completed=status.frames_done, total=status.total_frames, fps=fps, stage=status.stage)

        def on_note(message: str) -> None:
            _report("note", "yellow", message)

        try:
            status = render_through_dagster(spec, on_status, source=str(args.source), on_note=on_note, ahead=ahead)
        except StoppedFollowing as exc:  # a render another CLI submitted: it goes on
            _report("stopped", "yellow", exc)
            return EXIT_CANCELLED
        except RenderCancelled as exc:  # the message says what the render was waiting on, if it had stopped moving
            _report("cancelled", "yellow", f"{exc}; the render's runs were terminated; no output written")
            return EXIT_CANCELLED
    seconds = time.monotonic() - started
    err.print(
        f"[green]done[/] {status.output}  {status.total_frames} frames in {seconds:.1f} s (through Dagster)",
        soft_wrap=True,
    )
    if status.blocked_note:
        _report("warning", "yellow", status.blocked_note)
    return EXIT_OK


def cmd_still(args: argparse.Namespace) -> int:
    """One frame, rendered here in one browser: the video's frame ``--frame`` as an image."""
    from helios_pipeline.frame_ref import FrameError, parse_frame
    from helios_pipeline.stills import StillError, render_still

    spec = resolve_spec(args.source, None, _composition_options(args), args.set or [])
    try:
        frame = parse_frame(args.frame, spec.fps, spec.total_frames)
    except FrameError as exc:
        _report("error", "bold red", f"--frame {exc}")
        return EXIT_INVALID
    try:
        result = render_still(spec, args.output, frame=frame)
    except StillError as exc:
        _report("error", "bold red", exc)
        return EXIT_INVALID
    err.print(
        f"[green]done[/] {result.output}  frame {result.frame} (composition frame {result.composition_frame}, "
        f"{result.capture_method}) in {result.seconds:.1f} s",
        soft_wrap=True,
        highlight=False,
    )
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    """Hand a render to a running deployment (its daemon renders it); print the render key."""
    _import_dagster()
    from helios_pipeline.dagster_defs.runner import cancel_submission, daemon_running, get_instance, submit
    from helios_pipeline.spec import sanitize_key

    spec = _spec_from_args(args)
    check_inputs(spec, source_label(args.source))
    instance = get_instance()
    since, key = time.time(), sanitize_key(args.key or spec.name)  # the key submit registers
    try:
        submission = submit(spec, instance, render_key=args.key, source=str(args.source))
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP while submitting: nothing of it may go on rendering
        cancel_submission(instance, key, since)
        _report("cancelled", "yellow", f"render {key} was not submitted; its backfill was cancelled")
        return EXIT_CANCELLED
    print(submission.key)
    if submission.joined is not None:
        _report("note", "yellow", f"render {submission.key} was already in progress (backfill {submission.joined})")
    if not daemon_running(instance):
        _report("note", "yellow", "no Dagster daemon is running on this instance; start `helios-pipeline ui`")
    return EXIT_OK


def cmd_ui(args: argparse.Namespace) -> int:
    """The Dagster UI and daemon on this project's workspace and instance (DAGSTER_HOME, default .dagster_home/).

    What `dagster dev` starts, except that the daemon is ours: the same Dagster daemon with a 0.5 s backfill loop
    (HELIOS_BACKFILL_LOOP_SECONDS) instead of 30 s, so a backfill's stages follow each other without a pause, and
    sensor and automation loops that follow HELIOS_TRIGGER_SECONDS below Dagster's 5 s.
    """
    from helios_pipeline.dagster_defs.daemon import daemon_command
    from helios_pipeline.dagster_defs.runner import dagster_home, get_instance
    from helios_pipeline.dagster_defs.settings import PROJECT_ROOT
    from helios_pipeline.processes import start_group, stop_groups
    from helios_pipeline.scratch import UI_TEMP_PREFIX, process_folder

    stop_seconds = 5.0  # webserver and daemon together, inside a service manager's 10 s grace
    refused = _cannot_listen(args.host, args.port)
    if refused is not None:  # said before anything starts: the webserver would say it in its log and exit, later
        _report("error", "bold red", f"cannot serve the UI on {args.host}:{args.port}: {refused}")
        return EXIT_INVALID
    home = dagster_home()
    # a new DAGSTER_HOME's databases are made here: the webserver and the daemon making them at once can leave
    # alembic's version table with two heads, an instance neither can open again
    get_instance().dispose()
    workspace = str(PROJECT_ROOT / "workspace.yaml")
    webserver_command = [sys.executable, "-m", "dagster_webserver", "-w", workspace]
    webserver_command += ["-h", args.host, "-p", str(args.port)]
    # their temporary files (code-server sockets, the run workers' fork server, …) in a folder removed at the end:
    # what outlives the stop's grace is killed, and leaves them behind
    scratch = process_folder(UI_TEMP_PREFIX)
    env = {**os.environ, "TMPDIR": str(scratch)}
    daemon = daemon_command("run", "-w", workspace, stop_with_parent=True)  # both stop if this CLI is killed
    processes = {
        "webserver": start_group(webserver_command, cwd=PROJECT_ROOT, env=env, term_with_parent=True),
        "daemon": start_group(daemon, cwd=PROJECT_ROOT, env=env),
    }
    err.print(f"DAGSTER_HOME={home}; open http://{args.host}:{args.port} (Ctrl-C stops the UI and the daemon)")
    try:
        while True:
            for name, process in processes.items():
                if process.poll() is not None:
                    _report("error", "bold red", f"the Dagster {name} exited with code {process.returncode}")
                    return EXIT_FAILED
            time.sleep(0.5)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP
        return EXIT_OK
    finally:
        stop_groups(list(processes.values()), stop_seconds)
        shutil.rmtree(scratch, ignore_errors=True)
        _wipe_daemon_heartbeats()


def _cannot_listen(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host``:``port`` and what to change, or None when it can."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"no such address ({exc.strerror}): check --host"
    for family, kind, protocol, _name, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the webserver does
            try:
                probe.bind(address)
            except OSError as exc:
                return f"{exc.strerror or exc}: choose another --port (or stop what listens there)"
    return None


def _wipe_daemon_heartbeats() -> None:
    """The UI's daemon is gone: without this, a CLI render in the next minute would wait on its heartbeats."""
    import dagster as dg

    # an instance that cannot be opened has no heartbeats to mislead anyone
    with contextlib.suppress(Exception), dg.DagsterInstance.get() as instance:
        instance.wipe_daemon_heartbeats()


def cmd_doctor(_args: argparse.Namespace) -> int:
    from helios_pipeline.engine.doctor import run_checks

    checks = run_checks()
    table = Table("check", "status", "detail")
    for check in checks:
        table.add_row(check.name, "[green]ok[/]" if check.ok else "[red]missing[/]", check.detail)
    Console().print(table)
    required = {"chromium", "ffmpeg", "ffprobe", "encoder libx264", "encoder aac"}
    return EXIT_OK if all(c.ok for c in checks if c.name in required) else EXIT_FAILED


def cmd_worker(args: argparse.Namespace) -> int:
    """A Celery worker for chunk runs, checked before it starts: exit 2 when its config or servers are wrong."""
    from pathlib import Path

    from helios_pipeline.dagster_defs.worker import (
        DEFAULT_WORKER_CONFIG,
        WorkerConfigError,
        WorkerOptions,
        node_name,
        preflight,
        run_worker,
    )

    if args.concurrency < 1:
        _report("error", "bold red", f"--concurrency must be at least 1, got {args.concurrency}")
        return EXIT_INVALID
    options = WorkerOptions(
        name=args.name or f"helios-{os.getpid()}",
        concurrency=args.concurrency,
        config_yaml=Path(args.config or DEFAULT_WORKER_CONFIG).resolve(),
        queues=tuple(args.queue),
        loglevel=args.loglevel,
    )
    try:
        preflight(options, os.environ.get("DAGSTER_HOME"))
    except WorkerConfigError as exc:
        _report("error", "bold red", exc)
        return EXIT_INVALID
    err.print(f"worker {node_name(options.name)}: {options.concurrency} at a time, config {options.config_yaml}")
    return run_worker(options)


def cmd_status(args: argparse.Namespace) -> int:
    """Renders and their state, read from the instance (works beside a running UI or deployment)."""
    from helios_pipeline.dagster_defs.runner import dagster_home, get_instance
    from helios_pipeline.dagster_defs.settings import Settings, storage_resource
    from helios_pipeline.dagster_defs.status import UnknownRender, all_statuses, as_json, status_of

    storage = storage_resource(Settings.from_env())
    with get_instance() as instance:
        try:
            found = status_of(instance, args.name, storage) if args.name else all_statuses(instance, storage)
        except UnknownRender as exc:
            _report("error", "bold red", f"{exc} (DAGSTER_HOME={dagster_home()})")
            return EXIT_INVALID
    if args.json:
        print(as_json(found))
    else:
        _print_status(found)
    return EXIT_OK


def _print_status(found: Any) -> None:
    from helios_pipeline.dagster_defs.status import RenderSummary

    out = Console()
    renders = [found] if isinstance(found, RenderSummary) else found
    if not renders:
        out.print("no renders registered in this Dagster instance")
        return
    errors = any(render.error for render in renders)  # the error column only when there is one to show
    table = _table("render", "state", "frames", "output", "started", "wall", *(["error"] if errors else []))
    for render in renders:
        started = render.started.astimezone().strftime("%Y-%m-%d %H:%M:%S") if render.started else ""
        row = [_cell(render.name), render.label, _cell(render.frames), _cell(render.output), started]
        table.add_row(*row, _seconds(render.wall_seconds), *([_cell(render.error)] if errors else []))
    out.print(table)
    if isinstance(found, RenderSummary) and found.chunk_details:
        errors = any(chunk.error for chunk in found.chunk_details)
        chunks = _table("chunk", "state", "frames", "worker", "wall", *(["error"] if errors else []))
        for chunk in found.chunk_details:
            frames = f"{chunk.frames}/{chunk.of_frames}" if chunk.frames is not None and chunk.of_frames else ""
            row = [chunk.chunk, chunk.state.value, frames, _cell(chunk.worker), _seconds(chunk.wall_seconds)]
            chunks.add_row(*row, *([_cell(chunk.error)] if errors else []))
        out.print(chunks)


def _table(*columns: str) -> Table:
    """A table whose paths, URIs and errors fold onto more lines rather than being cut short."""
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold" if column in ("output", "error", "worker") else "ellipsis")
    return table


def _cell(value: object) -> Text:
    """A table cell printed verbatim (paths and error messages are never read as rich markup)."""
    return Text("" if value is None else str(value))


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} s"


CANCEL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_cancel() -> Iterator[None]:
    """SIGTERM and SIGHUP mean what Ctrl-C means: the first of them raises ``KeyboardInterrupt``.

    Service managers, containers and CI runners stop a process with SIGTERM, a closed terminal
    sends SIGHUP; both must cancel the render (runs, browsers, FFmpeg, our daemon), not kill the
    CLI and orphan what it started. Later signals are ignored, so the cleanup the first one
    started (bounded to a few seconds) is not cut short. The previous handlers are restored after.
    """
    cancelling = False

    def cancel(signum: int, _frame: FrameType | None) -> None:
        nonlocal cancelling
        if not cancelling:
            cancelling = True
            raise KeyboardInterrupt(signal.Signals(signum).name)

    with signal_handlers(CANCEL_SIGNALS, cancel):
        yield


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("render", "submit", "still", "ui") and threading.current_thread() is threading.main_thread():
        with _signals_cancel():
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    handlers = {
        "render": cmd_render,
        "plan": cmd_plan,
        "doctor": cmd_doctor,
        "submit": cmd_submit,
        "still": cmd_still,
        "ui": cmd_ui,
        "worker": cmd_worker,
        "status": cmd_status,
    }
    try:
        return handlers[args.command](args)
    except SpecError as exc:
        _report("error", "bold red", exc)
        return EXIT_INVALID
    except SettingError as exc:  # a deployment setting (limit, network policy) that is not valid
        _report("invalid setting", "bold red", exc)
        return EXIT_INVALID
    except RenderCancelled as exc:
        _report("cancelled", "yellow", exc)
        return EXIT_CANCELLED
    except RenderError as exc:
        _report("render failed", "bold red", exc)
        return EXIT_FAILED
    except StorageError as exc:  # a missing bucket, bad credentials: found before anything renders
        _report("storage error", "bold red", exc)
        return EXIT_INVALID
    except DeploymentUnreachable as exc:  # Postgres or Redis of the deployment down: found before anything starts
        _report("deployment unreachable", "bold red", exc)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["RenderOrchestrator", "main"]
