"""The network side of one chunk's page: the policy in force, its egress gate, what it refused.

The page's browser context uses the gate as its proxy (loopback included), so every connection
the page opens is decided by :class:`helios_pipeline.network.Guard`. Refusals are counted; the
URLs behind them come from the page's failed requests and WebSockets. With ``strict`` the first
refusal fails the chunk (a :class:`PageError`: the same page fails the same way every time).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from helios_pipeline.engine.cdp import CdpSession
from helios_pipeline.engine.egress import EgressGate, Refusal, egress_gate
from helios_pipeline.engine.errors import PageError, RenderError
from helios_pipeline.engine.page import RenderPage
from helios_pipeline.network import DEFAULT_PORTS, REPORTED_URLS, Guard, read_deployment_policy
from helios_pipeline.spec import RenderSpec

REFUSED_MARK = "ERR_SOCKS_CONNECTION_FAILED"
"""How Chromium reports a connection the gate refused."""
STRICT_SETTLE_S = 0.2
"""How long a strict failure waits for the page's failed-request event, to name the URL."""
DOWNLOAD_TIMEOUT_S = 60.0
"""How long a page audio source downloaded through the gate may take to connect, and between two reads."""


def _endpoint(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname.lower(), port


class PageNetwork:
    """Refusals of one chunk's gate, and the URLs the page tried; thread-safe (the gate has its own threads)."""

    def __init__(self, guard: Guard):
        self.guard = guard
        self.gate: EgressGate | None = None
        self._lock = threading.Lock()
        self._refusals: list[tuple[str, int, str]] = []
        self._urls: dict[tuple[str, int], list[str]] = {}
        self._requests: dict[tuple[str, str], str] = {}
        """The page's requests ((session, DevTools request id) -> URL): a failed one's event names only its id."""

    @property
    def proxy(self) -> str | None:
        """The browser context's proxy: the gate, loopback included (None: no gate, mode open)."""
        return None if self.gate is None else self.gate.proxy_url

    def refused(self, host: str, port: int, refusal: Refusal) -> None:
        with self._lock:
            self._refusals.append((host.lower().strip("[]"), port, refusal.rule))

    def tried(self, url: str) -> None:
        """A URL the page failed to load (or a WebSocket it opened): names refusals of its host and port."""
        endpoint = _endpoint(url)
        if endpoint is not None:
            with self._lock:
                urls = self._urls.setdefault(endpoint, [])
                if url not in urls:
                    urls.append(url)

    def watch(self, page: RenderPage) -> None:
        """Learn the URLs behind refusals from the network events of the page and of the workers and frames it
        starts (no request is held up)."""
        if self.gate is None:
            return
        self._subscribe(page.cdp)
        page.child_watchers.append(self._subscribe_child)

    def _subscribe(self, session: CdpSession) -> None:
        session.on("Network.requestWillBeSent", lambda event: self._requested(session.session_id, event))
        session.on("Network.loadingFailed", lambda event: self._failed(session.session_id, event))
        session.on("Network.webSocketCreated", lambda event: self.tried(event["url"]))

    def _subscribe_child(self, session: CdpSession) -> None:
        self._subscribe(session)
        session.post("Network.enable")  # before the paused worker or frame runs (``RenderPage._attached``)

    def _requested(self, session_id: str, event: dict[str, Any]) -> None:
        with self._lock:
            self._requests[(session_id, event["requestId"])] = event["request"]["url"]

    def _failed(self, session_id: str, event: dict[str, Any]) -> None:
        with self._lock:
            url = self._requests.get((session_id, event["requestId"]), "")
        if url and REFUSED_MARK in str(event.get("errorText", "")):
            self.tried(url)

    @property
    def blocked_count(self) -> int:
        with self._lock:
            return len(self._refusals)

    def blocked(self) -> list[tuple[str, str]]:
        """(URL, rule) of the first distinct refused URLs; ``host:port`` where no URL was seen."""
        found: list[tuple[str, str]] = []
        with self._lock:
            for host, port, rule in self._refusals:
                for url in self._urls.get((host, port)) or [f"{host}:{port}"]:
                    if url not in (seen for seen, _ in found):
                        found.append((url, rule))
        return found[:REPORTED_URLS]

    def check(self, frame: int | None) -> None:
        """With ``strict``, fail on the first refusal, naming its URL and the rule."""
        if self.guard.strict and self.blocked_count:
            raise self.refusal_error(frame, "(strict)")

    def own_origin_refusal(self) -> str | None:
        """The rule that refused the page's own origin (a composition URL the deployment forbids), or None."""
        own = (self.guard.own_host, self.guard.own_port)
        with self._lock:
            return next((rule for host, port, rule in self._refusals if (host, port) == own), None)

    def refusal_error(self, frame: int | None, why: str) -> PageError:
        """The first refusal as a page error (deterministic: the same page is refused again)."""
        time.sleep(STRICT_SETTLE_S)  # the failed request's event names the URL
        url, rule = self.blocked()[0]
        return PageError(f"the page requested {url}, which the network policy refuses: {rule} {why}", frame)

    def download(self, url: str, label: str) -> bytes | None:
        """Fetch ``url`` through the gate (each redirect hop decided); None when the policy refuses it."""
        import requests  # ~8 MB and 0.1 s that only a page with remote audio sources under a policy needs

        assert self.gate is not None, "downloads go through the gate"
        proxy = self.gate.proxy_url.replace("socks5://", "socks5h://")  # host names resolved by the gate, as for pages
        before = self.blocked_count
        try:
            response = requests.get(url, proxies={"http": proxy, "https": proxy}, timeout=DOWNLOAD_TIMEOUT_S)
        except requests.RequestException as exc:
            if self.blocked_count > before:
                self.tried(url)
                return None
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RenderError(f"page audio: {label}: could not load {url}: {first_line}") from None
        if not response.ok:
            raise RenderError(f"page audio: {label}: {url} answered HTTP {response.status_code}")
        return response.content

    def explain(self, error: PageError) -> PageError:
        """``error`` with the first refusal added: a page that throws on a refused fetch says why it was refused."""
        blocked = self.blocked()
        if not blocked or "network policy" in error.reason:
            return error
        url, rule = blocked[0]
        return PageError(f"{error.reason} (the network policy refused {url}: {rule})", error.frame)

    def summary(self) -> dict[str, Any]:
        blocked = self.blocked()
        return {
            "blocked_requests": self.blocked_count,
            "blocked_urls": [url for url, _ in blocked],
            "blocked_rule": blocked[0][1] if blocked else "",
        }


@contextlib.contextmanager
def page_network(spec: RenderSpec, page_url: str) -> Iterator[PageNetwork]:
    """The chunk's network: a gate for the policy of ``spec`` (and the deployment), closed after."""
    try:
        deployment = read_deployment_policy()
    except ValueError as exc:
        raise RenderError(str(exc)) from None
    network = PageNetwork(Guard.for_page(page_url, spec.network, deployment, local=spec.is_local))
    if network.guard.is_open:
        yield network
        return

    def decide(host: str, port: int, address: str) -> Refusal | None:
        rule = network.guard.refusal(host, port, address)
        return None if rule is None else Refusal(rule)

    with egress_gate(decide, network.refused) as gate:
        network.gate = gate
        try:
            yield network
        finally:
            network.gate = None
