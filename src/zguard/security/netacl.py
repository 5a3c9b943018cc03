"""Network allowlists, and which address a request comes from when it passes through proxies.

Pure: strings in, decisions out; no I/O, no framework imports. Deny by default: an address that
does not parse, or a client whose address cannot be told, is never allowed.

Rules, in the words of the settings:

- ``api.allow`` / ``console.allow`` / ``trusted_proxies`` are lists of networks in CIDR form
  (``10.0.0.0/8``, ``2001:db8::/32``); a bare address means that one address (/32 or /128).
  An entry with host bits set (``10.1.2.3/8``) is refused rather than guessed at.
- IPv4-mapped IPv6 addresses (``::ffff:10.0.0.1``, what a dual-stack socket reports for an IPv4
  peer) are treated as the IPv4 address they carry, both in lists and in addresses checked. An
  IPv6 network therefore never matches an IPv4 client: ``::/0`` does not include ``0.0.0.0/0``.
- The client is the TCP peer, unless the peer is a trusted proxy; only then is
  ``X-Forwarded-For`` read, right to left, skipping trusted proxies, and the first address that
  is not one is the client. Everything to its left was written by the client and is ignored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
SHOWN_MAX_CHARS = 64  # client-written text echoed in messages is cut to this length
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")
# "[2001:db8::1]" or "[2001:db8::1]:443" (some proxies add brackets and ports), "192.0.2.1:443".
_BRACKETED = re.compile(r"^\[([^\]]+)\](?::\d{1,5})?$")
_V4_WITH_PORT = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$")


def _unmapped(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_address(text: str) -> Address | None:
    """The address in `text`, or None when it is not one.

    Accepts what peers and proxies write: ``192.0.2.1``, ``2001:db8::1``, ``fe80::1%eth0``,
    ``[2001:db8::1]``, and either form with a port (``192.0.2.1:443``, ``[2001:db8::1]:443``).
    Hostnames are never resolved.
    """
    text = text.strip()
    match = _BRACKETED.match(text) or _V4_WITH_PORT.match(text)
    if match:
        text = match.group(1)
    try:
        return _unmapped(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse_network(text: str) -> Network:
    """A network from a CIDR entry or a bare address; ValueError saying how to write it."""
    entry = text.strip()
    try:
        network = ipaddress.ip_network(entry, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"{text!r} is not an IP network; write CIDR such as 10.0.0.0/8 or 2001:db8::/32, "
                "or a single address (hostnames are not resolved)"
            ) from None
        raise ValueError(
            f"{text!r} has host bits set; write {loose} for the whole network, "
            f"or {entry.split('/')[0]} alone for that one address"
        ) from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED_V4):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # always, inside ::ffff:0:0/96; the test is for the type checker
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def parse_networks(entries: Iterable[str]) -> list[Network]:
    """Every entry parsed; ValueError listing every bad entry (with its position) at once."""
    networks: list[Network] = []
    problems: list[str] = []
    for position, entry in enumerate(entries):
        try:
            networks.append(parse_network(entry))
        except ValueError as exc:
            problems.append(f"entry {position}: {exc}")
    if problems:
        raise ValueError("; ".join(problems))
    return networks


class NetworkAllowlist:
    """A set of networks; `allows(address)` says whether an address falls in one of them."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks: tuple[Network, ...] = tuple(networks)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> NetworkAllowlist:
        """From CIDR strings or bare addresses; ValueError naming every bad entry."""
        return cls(parse_networks(entries))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def entries(self) -> list[str]:
        """The networks as canonical CIDR strings, in order (what `doctor --explain` compares)."""
        return [str(n) for n in self.networks]

    def digest(self) -> str:
        """16 hex digits of SHA-256 over the canonical entries: which allowlist was in force."""
        return hashlib.sha256(",".join(self.entries()).encode("ascii")).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"NetworkAllowlist([{', '.join(str(n) for n in self.networks)}])"

    def allows(self, address: Address | str | None) -> bool:
        """True only for an address inside one of the networks; None or unparseable text is False."""
        if isinstance(address, str):
            address = parse_address(address)
        if address is None:
            return False
        address = _unmapped(address)
        return any(address.version == net.version and address in net for net in self.networks)


@dataclass(frozen=True)
class Client:
    """Where a request comes from, as far as it can be told.

    `address` is None when it cannot be told; such a client is allowed nowhere (fail closed).
    `shown` is what messages and logs name: the address, or why there is none. `forwarded` says
    whether it was read from ``X-Forwarded-For`` rather than the TCP peer.
    """

    address: Address | None
    shown: str
    forwarded: bool = False


def _shown(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= SHOWN_MAX_CHARS else text[:SHOWN_MAX_CHARS] + "...")


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted_proxies: NetworkAllowlist) -> Client:
    """The request's client, from the TCP peer and the ``X-Forwarded-For`` header values.

    `forwarded_for` holds every ``X-Forwarded-For`` header in the order received; each may be a
    comma-separated list, and empty elements are skipped. The header is read only when the peer
    is a trusted proxy; from anyone else it changes nothing.

    Decision (fail closed): walking right to left, an entry that is not an IP address (``unknown``,
    a hostname, junk) ends the walk with *no* client address, which no allowlist admits. We do not
    fall back to the last trusted hop: that would admit any request that reached an allowed
    proxy carrying junk. When every hop is a trusted proxy (a load balancer's own health check, or
    no header at all), the client is the left-most of them.
    """
    peer_address = parse_address(peer) if peer is not None else None
    if peer_address is None:
        return Client(None, f"unknown (the connection has no IP peer address: {_shown(peer or '')})")
    if not trusted_proxies.allows(peer_address):
        return Client(peer_address, str(peer_address))
    hops = [item for value in forwarded_for for item in value.split(",") if item.strip()]
    client = Client(peer_address, str(peer_address))
    for entry in reversed(hops):
        address = parse_address(entry)
        if address is None:
            return Client(
                None,
                f"unknown (X-Forwarded-For entry {_shown(entry)} from trusted proxy {client.shown} "
                "is not an IP address)",
                forwarded=True,
            )
        client = Client(address, str(address), forwarded=True)
        if not trusted_proxies.allows(address):
            break
    return client
