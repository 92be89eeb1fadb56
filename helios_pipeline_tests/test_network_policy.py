"""The network policy of composition pages (issue 9): address decisions, the spec's ``network:``
section, and real chunks against two loopback servers — the composition's own server and a
second one on 127.0.0.2 standing for an internal service, whose access log proves what reached it.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from helios_pipeline.dagster_defs.assets import chunk_video, render_plan
from helios_pipeline.dagster_defs.storage import RenderStorage
from helios_pipeline.engine.chunk import ChunkResult, render_chunk
from helios_pipeline.engine.egress import Refusal, egress_gate
from helios_pipeline.engine.errors import PageError
from helios_pipeline.engine.tools import ffmpeg_path
from helios_pipeline.fingerprint import render_fingerprint
from helios_pipeline.network import ENV_VAR, Guard, NetworkPolicy, address_kind, read_deployment_policy
from helios_pipeline.plan import RenderChunk
from helios_pipeline.spec import RenderSpec, SpecError, validate_spec
from helios_pipeline_tests.conftest import COMPOSITIONS
from helios_pipeline_tests.framecode import decode_gray_frames, frame_indices
from helios_pipeline_tests.helpers import chunk_key, latest_metadata, register, run, write_spec

# --- address decisions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.10", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("127.0.0.2", "loopback"),
        ("::1", "loopback"),
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped IPv6 is judged as its IPv4 address
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),  # Chromium connects 0.0.0.0 to this machine
        ("224.0.0.251", "multicast"),
        ("240.0.0.1", "private"),  # reserved (Python counts 240/4 as private)
        ("100.64.0.1", "non-public"),  # carrier-grade NAT: neither private nor global
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_address_kinds(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


OWN = "http://127.0.0.1:8000/index.html"


def guard(spec: dict | None = None, deployment: dict | None = None) -> Guard:
    return Guard.for_page(
        OWN,
        None if spec is None else NetworkPolicy.model_validate(spec),
        None if deployment is None else NetworkPolicy.model_validate(deployment),
    )


def test_default_policy_allows_own_origin_and_public_only() -> None:
    default = guard()
    assert default.refusal("127.0.0.1", 8000, "127.0.0.1") is None  # its own server, though loopback
    assert default.refusal("example.com", 443, "93.184.215.14") is None
    assert default.refusal("127.0.0.1", 8001, "127.0.0.1") == (
        "127.0.0.1 is a loopback address (the default network policy)"
    )
    # a name is decided on the address it resolved to
    assert default.refusal("metadata.internal", 80, "169.254.169.254") == (
        "metadata.internal (169.254.169.254) is a link-local address (the default network policy)"
    )
    assert "private" in str(default.refusal("db", 5432, "::ffff:10.0.0.5"))


def test_allow_entries_networks_hosts_and_origins() -> None:
    allowed = guard({"allow": ["10.0.0.0/8", "assets.internal:8080", "http://127.0.0.2:9000", "fd00::/8"]})
    assert allowed.refusal("10.9.9.9", 80, "10.9.9.9") is None
    assert allowed.refusal("anything", 80, "10.1.1.1") is None  # networks match the resolved address
    assert allowed.refusal("assets.internal", 8080, "192.168.0.4") is None
    assert allowed.refusal("assets.internal", 8081, "192.168.0.4") is not None  # another port
    assert allowed.refusal("127.0.0.2", 9000, "127.0.0.2") is None
    assert allowed.refusal("127.0.0.2", 9001, "127.0.0.2") is not None
    assert allowed.refusal("x", 80, "fd00::5") is None
    assert allowed.refusal("x", 80, "192.168.1.1") is not None


def test_own_origin_mode_refuses_public_addresses_too() -> None:
    locked = guard({"mode": "own-origin", "allow": ["cdn.example.com"]})
    assert locked.refusal("127.0.0.1", 8000, "127.0.0.1") is None
    assert locked.refusal("cdn.example.com", 443, "151.101.1.1") is None
    assert locked.refusal("example.com", 443, "93.184.215.14") == (
        "example.com:443 is not the page's own origin (mode own-origin) (the spec's network policy)"
    )


def test_the_deployment_policy_is_the_default_and_a_ceiling() -> None:
    # no network: section in the spec: the deployment's policy applies
    assert guard(None, {"mode": "own-origin"}).refusal("example.com", 443, "93.184.215.14") is not None
    # the spec cannot open what the deployment refuses, and the rule names the deployment
    ceiling = guard({"mode": "open", "allow": ["10.0.0.0/8"]}, {"mode": "default"})
    assert not ceiling.is_open
    assert ceiling.refusal("10.0.0.1", 80, "10.0.0.1") == (
        f"10.0.0.1 is a private address (the deployment's {ENV_VAR})"
    )
    # the spec can narrow an open deployment, and strict from either side holds
    narrowed = guard({"mode": "own-origin"}, {"mode": "open", "strict": True})
    assert narrowed.refusal("example.com", 443, "93.184.215.14") is not None and narrowed.strict
    assert guard({"mode": "open"}).is_open and guard(None, {"mode": "open"}).is_open


def test_a_composition_urls_origin_is_judged_by_the_deployment_only() -> None:
    metadata = "http://169.254.169.254/latest/meta-data/"
    own = ("169.254.169.254", 80, "169.254.169.254")
    assert Guard.for_page(metadata, None, None, local=False).refusal(*own) is None  # no deployment: the spec chose it
    strict_spec = NetworkPolicy(mode="own-origin")
    assert Guard.for_page(metadata, strict_spec, None, local=False).refusal(*own) is None
    farm = NetworkPolicy(mode="own-origin")
    assert Guard.for_page(metadata, None, farm, local=False).refusal(*own) == (
        f"169.254.169.254 is a link-local address (the deployment's {ENV_VAR})"
    )
    public = Guard.for_page("https://example.com/c.html", None, farm, local=False)
    assert public.refusal("example.com", 443, "93.184.215.14") is None
    assert public.refusal("cdn.example.com", 443, "93.184.215.15") is not None  # own-origin: not its origin
    # the local composition server is always its own origin
    assert Guard.for_page(OWN, None, farm).refusal("127.0.0.1", 8000, "127.0.0.1") is None


def test_deployment_setting_parses_a_mode_or_a_mapping() -> None:
    assert read_deployment_policy({}) is None
    assert read_deployment_policy({ENV_VAR: "own-origin"}) == NetworkPolicy(mode="own-origin")
    assert read_deployment_policy({ENV_VAR: "{allow: [10.1.2.3], strict: true}"}) == NetworkPolicy(
        allow=("10.1.2.3",), strict=True
    )
    with pytest.raises(ValueError, match=rf"{ENV_VAR}='closed': mode: Input should be"):
        read_deployment_policy({ENV_VAR: "closed"})
    with pytest.raises(ValueError, match=r"allow\.0: 'not a/host' is neither a network"):
        read_deployment_policy({ENV_VAR: "{allow: ['not a/host']}"})


def spec_with(tmp_path: Path, network: object) -> RenderSpec:
    page = tmp_path / "index.html"
    page.write_text("<!doctype html>", encoding="utf-8")
    data = {"composition": str(page), "width": 64, "height": 64, "fps": 30, "frame_count": 2, "network": network}
    return validate_spec(data, base_dir=tmp_path, source="spec.yaml")


def test_spec_errors_name_the_field_and_the_entry(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as error:
        spec_with(tmp_path, {"mode": "closed", "allow": ["10.0.0.0/8", "http://x/path", "h:99999"], "deny": []})
    message = str(error.value)
    assert "spec.yaml: network.mode: Input should be 'default', 'own-origin' or 'open'" in message
    assert "network.allow[1]: 'http://x/path' is not an origin" in message
    assert "network.allow[2]: 'h:99999': the port must be a number in 1-65535" in message
    assert "network.deny: unknown key" in message


def test_the_policy_is_part_of_the_fingerprint_but_strict_is_not(tmp_path: Path) -> None:
    without = render_fingerprint(spec_with(tmp_path, None))
    allowing = render_fingerprint(spec_with(tmp_path, {"allow": ["127.0.0.2"]}))
    strict = render_fingerprint(spec_with(tmp_path, {"allow": ["127.0.0.2"], "strict": True}))
    assert without != allowing == strict


def socks_connect(proxy_url: str, host: str, port: int) -> tuple[int, socket.socket]:
    """A minimal SOCKS5 client (what Chromium does): CONNECT to a host name; the reply code and the socket."""
    proxy_port = int(proxy_url.rsplit(":", 1)[1])
    client = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    client.sendall(b"\x05\x01\x00")
    assert client.recv(2) == b"\x05\x00"
    name = host.encode()
    client.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
    reply = client.recv(10)
    return reply[1], client


def test_the_gate_connects_to_the_address_it_decided_on() -> None:
    """Names are resolved once, by the gate: it decides on that address and connects to exactly it."""
    listener = socket.create_server(("127.0.0.3", 0))
    port = listener.getsockname()[1]
    answers = {
        "assets.test": ["127.0.0.3"],
        "metadata.test": ["169.254.169.254"],
        "split.test": ["8.8.8.8", "10.0.0.1"],
    }
    refused: list[tuple[str, int, str]] = []
    guard = Guard.for_page(OWN, NetworkPolicy(allow=("127.0.0.3",)), None)

    def decide(host: str, port: int, address: str) -> Refusal | None:
        rule = guard.refusal(host, port, address)
        return None if rule is None else Refusal(rule)

    def resolve(host: str, _port: int) -> list[str]:
        return answers.get(host, [])

    with listener, egress_gate(decide, lambda h, p, r: refused.append((h, p, r.rule)), resolve) as gate:
        code, client = socks_connect(gate.proxy_url, "assets.test", port)
        with client:
            assert code == 0
            accepted, _ = listener.accept()
            with accepted:
                client.sendall(b"ping")
                assert accepted.recv(4) == b"ping"  # relayed to 127.0.0.3, the address the name resolved to
        for name in ("metadata.test", "split.test"):  # every address a name resolves to must pass
            code, client = socks_connect(gate.proxy_url, name, 80)
            client.close()
            assert code == 2  # "connection not allowed by ruleset"
        assert socks_connect(gate.proxy_url, "nowhere.test", 80)[0] == 4  # does not resolve: host unreachable
    assert refused == [
        ("metadata.test", 80, "metadata.test (169.254.169.254) is a link-local address (the spec's network policy)"),
        ("split.test", 80, "split.test (10.0.0.1) is a private address (the spec's network policy)"),
    ]


# --- real chunks against two loopback servers ---------------------------------------------------


@dataclass
class Server:
    """An HTTP server whose access log records every path requested."""

    base: str
    log: list[str] = field(default_factory=list)


@pytest.fixture
def internal_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Server B on 127.0.0.2: a white picture and a tone, standing for an internal service."""
    root = tmp_path_factory.mktemp("internal")
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:duration=1", str(root / "tone.wav")]
    white = ["-f", "lavfi", "-i", "color=white:size=16x16", "-frames:v", "1", str(root / "white.png")]
    for args in (tone, white):
        subprocess.run([ffmpeg_path(), "-v", "error", "-y", *args], check=True)
    log: list[str] = []

    class Logged(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            log.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.2", 0), functools.partial(Logged, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Server(f"http://127.0.0.2:{server.server_address[1]}", log)
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_deployment_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def page_using(folder: Path, body: str) -> Path:
    """A black page with ``body``; a picture that loads paints it white."""
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "index.html"
    style = "margin:0;background:#000"
    page.write_text(f'<!doctype html><html><body style="{style}">{body}</body></html>', encoding="utf-8")
    return page


def picture_and_sound(service: Server) -> str:
    return (
        f'<img src="{service.base}/white.png" style="display:block;width:100vw;height:100vh" onerror="this.remove()">'
        f'<audio src="{service.base}/tone.wav"></audio>'
        f'<script>fetch("{service.base.replace("127.0.0.2", "localhost")}/x").catch(() => {{}})</script>'
    )


def render(composition: str | Path, tmp_path: Path, frames: int = 2, **keys: object) -> tuple[ChunkResult, Path]:
    data = {"composition": str(composition), "width": 64, "height": 64, "fps": 30, "frame_count": frames, **keys}
    spec = validate_spec(data, base_dir=tmp_path, source="test")
    output = tmp_path / "out" / "chunk.mov"
    output.parent.mkdir(exist_ok=True)
    result = render_chunk(spec, RenderChunk(id=0, start_frame=0, frame_count=frames, output_file=output))
    return result, output


def mean_brightness(video: Path) -> float:
    return float(decode_gray_frames(video, side=16).mean())


@pytest.mark.slow
def test_an_internal_service_is_refused_by_default(internal_service: Server, tmp_path: Path) -> None:
    page = page_using(tmp_path / "site", picture_and_sound(internal_service))
    result, output = render(page, tmp_path)
    assert internal_service.log == [], "the internal service was reached"
    assert mean_brightness(output) < 20, "the refused picture was painted"
    assert result.page_audio_sources == 0  # the refused <audio> is not heard (FFmpeg never fetched it)
    assert result.blocked_requests >= 3
    base = internal_service.base
    assert f"{base}/white.png" in result.blocked_urls and f"{base}/tone.wav" in result.blocked_urls
    assert f"{base.replace('127.0.0.2', 'localhost')}/x" in result.blocked_urls  # a name, refused by its address
    # the first refusal's rule: the picture's, the sound's or the fetch's, whichever request the page made first
    assert re.fullmatch(
        r"(127\.0\.0\.2|localhost \(127\.0\.0\.1\)) is a loopback address \(the default network policy\)",
        result.blocked_rule,
    ), result.blocked_rule


@pytest.mark.slow
def test_the_spec_can_allow_the_internal_service(internal_service: Server, tmp_path: Path) -> None:
    page = page_using(tmp_path / "site", picture_and_sound(internal_service))
    result, output = render(page, tmp_path, network={"allow": ["127.0.0.2"]})
    assert "/white.png" in internal_service.log and "/tone.wav" in internal_service.log
    assert mean_brightness(output) > 235
    assert result.page_audio_sources == 1
    assert result.blocked_urls == [f"{internal_service.base.replace('127.0.0.2', 'localhost')}/x"]


@pytest.mark.slow
def test_strict_fails_the_chunk_naming_the_url(internal_service: Server, tmp_path: Path) -> None:
    page = page_using(tmp_path / "site", f'<img src="{internal_service.base}/white.png">')
    with pytest.raises(PageError) as error:
        render(page, tmp_path, network={"strict": True})
    assert f"{internal_service.base}/white.png" in str(error.value)
    assert "127.0.0.2 is a loopback address" in str(error.value)
    assert internal_service.log == []
    assert list((tmp_path / "out").iterdir()) == [], "a failed chunk left files behind"
    deadline = time.monotonic() + 5  # relays notice the closed gate within a second
    while gate_threads() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gate_threads() == [], "the chunk's egress gate was left running"


def gate_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("helios-egress")]


@pytest.mark.slow
def test_a_page_that_throws_on_a_refused_fetch_is_told_why(internal_service: Server, tmp_path: Path) -> None:
    url = f"{internal_service.base}/data.json"
    script = f"<script>window.helios = {{ waitUntilStable: () => fetch({url!r}) }};</script>"
    with pytest.raises(PageError) as error:
        render(page_using(tmp_path / "site", script), tmp_path)
    assert str(error.value) == (
        f"frame 0: the page threw: TypeError: Failed to fetch (the network policy refused {url}: "
        "127.0.0.2 is a loopback address (the default network policy))"
    )


@pytest.mark.slow
def test_workers_and_websockets_go_through_the_gate(internal_service: Server, tmp_path: Path) -> None:
    """A dedicated worker's fetch and a WebSocket are refused too; the page waits until both have failed."""
    worker_url, socket_url = f"{internal_service.base}/from-worker", f"{internal_service.base.replace('http', 'ws')}/ws"
    script = f"""<script>
      const worker = new Worker(URL.createObjectURL(new Blob(
        ['fetch("{worker_url}").then(() => postMessage("reached"), () => postMessage("refused"))'])));
      const fromWorker = new Promise(resolve => {{ worker.onmessage = event => resolve(event.data); }});
      const socket = new WebSocket("{socket_url}");
      const fromSocket = new Promise(resolve => {{ socket.onopen = () => resolve("reached");
                                                   socket.onerror = () => resolve("refused"); }});
      const outcome = Promise.all([fromWorker, fromSocket]);
      window.helios = {{ waitUntilStable: () => outcome }};
      outcome.then(results => {{ document.title = results.join(","); }});
    </script>"""
    page = page_using(tmp_path / "site", script)
    result, _ = render(page, tmp_path)
    assert internal_service.log == []
    assert worker_url in result.blocked_urls and socket_url in result.blocked_urls


@pytest.mark.slow
def test_a_redirect_to_an_internal_address_is_refused(internal_service: Server, tmp_path: Path) -> None:
    """A URL composition on server A (its own origin, on loopback: allowed) redirects a picture to B."""
    target = f"{internal_service.base}/white.png"
    page = page_using(
        tmp_path / "remote",
        '<img src="/redirect" style="display:block;width:100vw;height:100vh" onerror="this.remove()">',
    )

    class Redirecting(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", target)
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    own = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Redirecting, directory=str(page.parent)))
    threading.Thread(target=own.serve_forever, daemon=True).start()
    try:
        result, output = render(f"http://127.0.0.1:{own.server_address[1]}/index.html", tmp_path)
    finally:
        own.shutdown()
        own.server_close()
    assert internal_service.log == []
    assert mean_brightness(output) < 20
    assert result.blocked_urls == [target]


@pytest.mark.slow
def test_the_deployment_refuses_a_composition_url_on_an_internal_address(
    internal_service: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, "{mode: default}")
    composition = f"{internal_service.base}/white.png"
    with pytest.raises(PageError) as error:
        render(composition, tmp_path)
    assert str(error.value) == (
        f"the network policy refuses the composition {composition}: 127.0.0.2 is a loopback address "
        f"(the deployment's {ENV_VAR})"
    )
    assert internal_service.log == []
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_a_page_without_requests_renders_frame_exact_through_the_gate(tmp_path: Path) -> None:
    result, output = render(COMPOSITIONS / "frame_css", tmp_path, frames=6)
    assert frame_indices(output) == list(range(6))
    assert result.blocked_requests == 0 and result.blocked_urls == []


@pytest.mark.slow
def test_cli_warns_and_the_deployment_setting_is_a_ceiling(internal_service: Server, tmp_path: Path) -> None:
    """``helios-pipeline render --local``: chunk workers inherit HELIOS_NETWORK_POLICY, which the spec cannot widen."""
    page = page_using(tmp_path / "site", f'<img src="{internal_service.base}/white.png">')
    output = tmp_path / "out" / "video.mp4"
    sizes = ["--width", "64", "--height", "64", "--fps", "30", "--frames", "2", "--concurrency", "1"]
    command = [sys.executable, "-m", "helios_pipeline.cli", "render", str(page), "--local", "-q", *sizes]
    command += ["--set", "network.allow=[127.0.0.2]", "-o", str(output)]
    env = {**os.environ, ENV_VAR: "own-origin", "COLUMNS": "80", "TERM": "dumb"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert output.is_file()
    assert internal_service.log == []
    expected = (
        f"warning: the network policy refused 1 request(s) of the page: {internal_service.base}/white.png "
        f"(127.0.0.2:{internal_service.base.rsplit(':', 1)[1]} is not the page's own origin (mode own-origin) "
        f"(the deployment's {ENV_VAR}))"
    )
    assert expected in done.stderr


# --- through Dagster ------------------------------------------------------------------------------


@pytest.mark.slow
def test_chunk_metadata_counts_refusals_and_strict_is_not_retried(internal_service: Server, tmp_path: Path) -> None:
    storage = RenderStorage(location=str(tmp_path / "storage"))
    page = page_using(tmp_path / "site", f'<img src="{internal_service.base}/white.png">')
    lenient = write_spec(tmp_path / "specs", "lenient", page, frame_count=2, concurrency=1)
    strict = write_spec(tmp_path / "specs", "strict", page, frame_count=2, concurrency=1, network={"strict": True})
    with dg.instance_for_test() as instance:
        key = register(instance, storage, lenient)
        run(instance, storage, [render_plan], key)
        run(instance, storage, [chunk_video], chunk_key(key, "000"))
        metadata = latest_metadata(instance, chunk_video.key, str(chunk_key(key, "000")))
        assert metadata["blocked_requests"].value == 1
        assert metadata["blocked_urls"].value == [f"{internal_service.base}/white.png"]
        assert "loopback" in str(metadata["blocked_rule"].value)

        key = register(instance, storage, strict)
        run(instance, storage, [render_plan], key)
        failed = run(instance, storage, [chunk_video], chunk_key(key, "000"), raise_on_error=False)
        assert not failed.success
        kinds = [event.event_type for event in failed.all_events]
        assert dg.DagsterEventType.STEP_UP_FOR_RETRY not in kinds, "a strict refusal is deterministic: no retry"
        failure = next(event for event in failed.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE)
        assert f"{internal_service.base}/white.png" in str(failure.step_failure_data.error.message)
    assert internal_service.log == []
