"""``dagster api grpc`` (``python -m dagster``) with Dagster and our code location imported first, out of the
garbage collector's sight (``heap.long_lived_imports``).

The CLI's own daemon starts this server first thing (``early_code_server``), and for the next ~2 s the server,
the daemon and the CLI all import Dagster on the same CPUs: every render's start on a machine where no deployment
runs. What the server imports lives as long as it does; with the collector scanning it again and again while it
was made, the import took ~1.2 CPU-s instead of ~1.0.

    python -m helios_pipeline.dagster_defs.code_server api grpc --socket PATH --module-name MODULE [...]
"""

from __future__ import annotations

import contextlib
import importlib
import runpy
import signal
import sys

from helios_pipeline.heap import long_lived_imports

OWN_PACKAGE = "helios_pipeline."
"""Only a code location of this package is imported ahead: any other module is left to Dagster, which imports
it from the entry's working directory."""


def _option(argv: list[str], name: str) -> str | None:
    """The value given to ``name`` (``--name VALUE`` or ``--name=VALUE``), or None."""
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"{name}="):
            return arg.partition("=")[2]
    return None


def preload(argv: list[str]) -> None:
    """Import Dagster's code server and the code location ``argv`` names (if it is ours), then freeze them.

    A code location that fails to import is left to the server: it imports it again and reports the error the
    way Dagster does (a failed import leaves no module behind)."""
    with long_lived_imports():
        from helios_pipeline.dagster_defs import private_api

        private_api.import_code_server()
        module = _option(argv, "--module-name")
        if module is not None and module.startswith(OWN_PACKAGE):
            with contextlib.suppress(Exception):
                importlib.import_module(module)


def main() -> None:
    # Dagster's server takes SIGTERM as SIGINT: started by a process that ignores SIGINT (under `nohup ... &`, or in
    # the background of a script), it would ignore the SIGTERM that ends it with its daemon (PR_SET_PDEATHSIG)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    preload(sys.argv[1:])
    sys.argv = ["dagster", *sys.argv[1:]]
    runpy.run_module("dagster", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
