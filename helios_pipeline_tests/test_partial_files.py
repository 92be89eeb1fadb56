"""What a writer killed outright leaves (its partial files) is removed by the next writer on the host, and never
what a live writer, or a writer on another host sharing the folder, is still writing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from helios_pipeline.engine.fileio import atomic_output, partial_path, remove_orphaned_partials


def a_gone_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_a_partial_file_is_named_by_its_writer_and_keeps_the_extension(tmp_path: Path) -> None:
    final = tmp_path / "clip.v2.mp4"
    assert partial_path(final).name == f".clip.v2.partial-{os.getpid()}@{socket.gethostname()}.mp4"
    assert partial_path(final, ".filtergraph").suffix == ".filtergraph"


def test_only_the_partials_of_this_hosts_gone_writers_are_removed(tmp_path: Path) -> None:
    gone, host = a_gone_pid(), socket.gethostname()
    files = {
        "gone here": f".chunk_0000.partial-{gone}@{host}.mov",
        "gone here, its filter script": f".chunk_0000.partial-{gone}@{host}.filtergraph",
        "gone here, another file": f".chunk_0001.partial-{gone}@{host}.mov",
        "alive here": f".chunk_0000.partial-{os.getpid()}@{host}.mov",
        "gone on a host named like this one plus more": f".chunk_0000.partial-{gone}@{host}.example.mov",
        "gone elsewhere": f".chunk_0000.partial-{gone}@another-host.mov",
        "a finished file": "chunk_0000.mov",
    }
    for name in files.values():
        (tmp_path / name).write_bytes(b"x")
    previews = tmp_path / f".chunk_0000.partial-{gone}@{host}.previews"  # a chunk's preview JPEGs (a folder)
    previews.mkdir()
    (previews / "0.jpg").write_bytes(b"x")

    removed = remove_orphaned_partials(tmp_path, tmp_path / "chunk_0000.mov")
    expected = [files["gone here"], files["gone here, its filter script"], previews.name]
    assert sorted(path.name for path in removed) == sorted(expected)
    assert not previews.exists()
    remove_orphaned_partials(tmp_path)
    left = {label for label, name in files.items() if (tmp_path / name).exists()}
    assert left == {"alive here", "gone on a host named like this one plus more", "gone elsewhere", "a finished file"}


def test_an_atomic_output_removes_what_a_killed_writer_of_the_same_file_left(tmp_path: Path) -> None:
    final = tmp_path / "concat.mov"
    stale = tmp_path / f".concat.partial-{a_gone_pid()}@{socket.gethostname()}.mov"
    stale.write_bytes(b"half a video")
    with atomic_output(final) as partial:
        assert not stale.exists()
        partial.write_bytes(b"a whole video")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["concat.mov"]
