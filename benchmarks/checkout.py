"""The checkout a benchmark measures is the one its script lives in.

The scripts that start `helios-pipeline` processes run them in their own checkout (``cwd``), where Python finds
that checkout's package before anything on ``PYTHONPATH``. A *before* copy on ``PYTHONPATH`` would then measure
only part of the run (or none of it) as *before*. To compare two commits, run each copy's own script:
``git archive <rev> | tar -x -C /tmp/before && python /tmp/before/benchmarks/bench_dagster.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def use_this_checkout(repo: Path) -> None:
    """Put ``repo`` first on ``sys.path``; exit naming the other copy when ``PYTHONPATH`` holds another package."""
    for entry in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
        package = Path(entry).resolve() / "helios_pipeline"
        if package.is_dir() and package.parent != repo.resolve():
            sys.exit(
                f"PYTHONPATH names another helios_pipeline ({package}), but this script measures its own checkout "
                f"({repo}): its processes run there. Run that copy's own script instead: "
                f"python {package.parent / 'benchmarks' / Path(sys.argv[0]).name}"
            )
    sys.path.insert(0, str(repo))
