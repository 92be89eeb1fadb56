"""The network policy of composition pages: which addresses a page may connect to.

A render farm runs other people's compositions, so by default a page reaches its own origin (the
local composition server, or the composition URL's origin) and public addresses only; loopback,
private, link-local (cloud metadata at 169.254.169.254), multicast and reserved addresses are
refused. The spec's ``network:`` section and the deployment's ``HELIOS_NETWORK_POLICY`` can open
more (``allow``, ``mode: open``) or lock a page to its own origin (``mode: own-origin``).

Decisions are pure (no browser, no sockets): the engine's egress gate asks :meth:`Guard.refusal`
for every connection, with the address the host resolved to.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

ENV_VAR = "HELIOS_NETWORK_POLICY"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AllowRule:
    """One ``allow`` entry: a network (CIDR or single address), or a host with an optional port."""

    text: str
    network: IPNetwork | None = None
    host: str | None = None
    port: int | None = None

    def matches(self, host: str, port: int, address: IPAddress) -> bool:
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        return host.lower().strip("[]") == self.host and self.port in (None, port)


def parse_allow_entry(text: str) -> AllowRule:
    """``10.0.0.0/8``, ``127.0.0.2``, ``fd00::/8`` (networks: the resolved address must be inside);
    ``assets.internal``, ``assets.internal:8080``, ``[::1]:8080`` (host names as the page writes them);
    ``http://assets.internal:8080`` (an origin: its host and port)."""
    entry = text.strip()
    if not entry:
        raise ValueError("an empty entry")
    if "://" in entry:
        parts = urlsplit(entry)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"{text!r} is not an origin (scheme://host[:port], scheme http(s) or ws(s))")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
        return AllowRule(text=entry, host=parts.hostname.lower(), port=port)
    try:
        return AllowRule(text=entry, network=ipaddress.ip_network(entry, strict=False))
    except ValueError:
        pass
    host, port = _split_host_port(entry)
    if not host or any(char.isspace() or char in "/@?#" for char in host):
        raise ValueError(f"{text!r} is neither a network (10.0.0.0/8), a host[:port] nor an origin")
    return AllowRule(text=entry, host=host.lower(), port=port)


def _split_host_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [v6]:port
        host, _, rest = entry[1:].partition("]")
        port_text = rest.removeprefix(":") if rest.startswith(":") else None
        if rest and port_text is None:
            raise ValueError(f"{entry!r}: expected [address]:port")
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
    else:
        host, port_text = entry, None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{entry!r}: the port must be a number in 1-65535")
    return host, int(port_text)


def _valid_entry(text: str) -> str:
    parse_allow_entry(text)
    return text.strip()


Mode = Literal["default", "own-origin", "open"]


class NetworkPolicy(BaseModel):
    """What a page may connect to besides its own origin (the spec's ``network:`` section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "default"
    """default: public addresses; own-origin: nothing else; open: everything (no gate at all)."""
    allow: tuple[Annotated[str, AfterValidator(_valid_entry)], ...] = ()
    """Also allowed, in every mode: networks, hosts[:port] or origins."""
    strict: bool = False
    """A refused connection fails the chunk (instead of being counted and reported)."""

    @property
    def rules(self) -> tuple[AllowRule, ...]:
        return tuple(parse_allow_entry(entry) for entry in self.allow)


def address_kind(address: IPAddress) -> str | None:
    """Why ``address`` is not public (``"loopback"``, ``"private"``, …), or None for a public address.

    IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``) are judged as the IPv4 address they carry.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    )
    for kind, matches in checks:
        if matches:
            return kind
    return None if address.is_global else "non-public"


def read_deployment_policy(environ: dict[str, str] | None = None) -> NetworkPolicy | None:
    """``HELIOS_NETWORK_POLICY``: a mode (``own-origin``) or a YAML mapping like the spec's section
    (``{mode: default, allow: [10.1.2.3], strict: true}``); None when unset."""
    raw = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    if not raw:
        return None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ValueError(f"{ENV_VAR}={raw!r} is not valid YAML") from None
    if isinstance(data, str):
        data = {"mode": data}
    if not isinstance(data, dict):
        raise ValueError(f"{ENV_VAR}={raw!r}: expected a mode or a mapping of mode/allow/strict")
    try:
        return NetworkPolicy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise ValueError(f"{ENV_VAR}={raw!r}: {problems}") from None


@dataclass(frozen=True)
class Guard:
    """The policy a chunk enforces: the spec's and the deployment's, for a page of a given origin.

    A deployment policy is the default for specs without ``network:`` and a ceiling for those with
    one: a connection must be allowed by both. The page's own origin is always allowed when it is
    the local composition server; a composition URL's origin is exempt from the spec's policy but
    not from the deployment's, which judges it by its address (a spec cannot name
    ``http://169.254.169.254/`` as its composition).
    """

    own_host: str
    own_port: int
    spec: NetworkPolicy | None = None
    deployment: NetworkPolicy | None = None
    own_is_local: bool = True
    """The page is served by the chunk's own loopback server (a local composition)."""

    @classmethod
    def for_page(
        cls, page_url: str, spec: NetworkPolicy | None, deployment: NetworkPolicy | None, *, local: bool = True
    ) -> Guard:
        parts = urlsplit(page_url)
        return cls(
            own_host=(parts.hostname or "").lower(),
            own_port=parts.port or DEFAULT_PORTS.get(parts.scheme, 0),
            spec=spec,
            deployment=deployment,
            own_is_local=local,
        )

    @property
    def policies(self) -> list[tuple[str, NetworkPolicy]]:
        named = [("the spec's network policy", self.spec), (f"the deployment's {ENV_VAR}", self.deployment)]
        found = [(name, policy) for name, policy in named if policy is not None]
        return found or [("the default network policy", NetworkPolicy())]

    @property
    def is_open(self) -> bool:
        """Every policy in force is ``open``: no gate is needed."""
        return all(policy.mode == "open" for _, policy in self.policies)

    @property
    def strict(self) -> bool:
        return any(policy.strict for _, policy in self.policies)

    def refusal(self, host: str, port: int, address: str) -> str | None:
        """None when a connection to ``host:port`` (resolved to ``address``) is allowed, else the rule
        that refuses it, e.g. ``"127.0.0.2 is a loopback address (the spec's network policy)"``."""
        host = host.lower().strip("[]")
        own = (host, port) == (self.own_host, self.own_port)
        if own and self.own_is_local:
            return None
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        for name, policy in self.policies:
            if own and policy is not self.deployment:
                continue  # a composition URL's own origin: the spec chose it, only the deployment judges it
            reason = _refused_by(policy, host, port, ip, own=own)
            if reason is not None:
                return f"{reason} ({name})"
        return None


def _refused_by(policy: NetworkPolicy, host: str, port: int, address: IPAddress, *, own: bool) -> str | None:
    """Why ``policy`` refuses the connection, or None; ``own``: the composition URL's origin, judged by address."""
    if policy.mode == "open" or any(rule.matches(host, port, address) for rule in policy.rules):
        return None
    if policy.mode == "own-origin" and not own:
        return f"{host}:{port} is not the page's own origin (mode own-origin)"
    kind = address_kind(address)
    if kind is None:
        return None
    shown = host if host == str(address) else f"{host} ({address})"
    return f"{shown} is a{'n' if kind[0] in 'aeiou' else ''} {kind} address"


REPORTED_URLS = 5
"""How many refused URLs a chunk reports (the count covers all of them)."""


def describe_refusals(count: int, urls: list[str], rule: str) -> str:
    """One warning line: how many requests the policy refused, the first URLs, the first rule."""
    more = f" and {count - len(urls)} more" if count > len(urls) else ""
    return f"the network policy refused {count} request(s) of the page: {', '.join(urls)}{more} ({rule})"
