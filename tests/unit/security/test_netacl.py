"""The network allowlist and the client address behind proxies: every rule, both ways."""

from __future__ import annotations

import ipaddress

import pytest

from zguard.security.netacl import (
    LOOPBACK_NETWORKS,
    Client,
    NetworkAllowlist,
    client_address,
    parse_address,
    parse_network,
    parse_networks,
)

PROXIES = NetworkAllowlist.from_entries(["10.0.0.0/24", "2001:db8:ffff::/48"])
NOBODY = NetworkAllowlist([])


# --- parse_network ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "network"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3", "10.1.2.3/32"),
        ("10.1.2.3/32", "10.1.2.3/32"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        (" 192.168.0.0/16 ", "192.168.0.0/16"),
        ("::1", "::1/128"),
        ("::1/128", "::1/128"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("::/0", "::/0"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:10.1.2.3", "10.1.2.3/32"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
    ],
)
def test_parse_network(entry: str, network: str) -> None:
    assert str(parse_network(entry)) == network


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("", "not an IP network"),
        ("   ", "not an IP network"),
        ("localhost", "hostnames are not resolved"),
        ("example.com/24", "not an IP network"),
        ("10.0.0.256", "not an IP network"),
        ("10.0.0", "not an IP network"),
        ("010.0.0.1", "not an IP network"),
        ("10.0.0.0/33", "not an IP network"),
        ("10.0.0.0/-1", "not an IP network"),
        ("10.0.0.0/8/8", "not an IP network"),
        ("2001:db8::/129", "not an IP network"),
        ("2001:db8:::1", "not an IP network"),
        ("10.0.0.0-10.0.0.255", "not an IP network"),
        ("10.0.0.*", "not an IP network"),
        ("10.1.2.3/8", "write 10.0.0.0/8 for the whole network, or 10.1.2.3 alone"),
        ("2001:db8::1/32", "write 2001:db8::/32"),
    ],
)
def test_parse_network_refuses_saying_how_to_write_it(entry: str, why: str) -> None:
    with pytest.raises(ValueError, match=r"CIDR|host bits") as info:
        parse_network(entry)
    assert repr(entry) in str(info.value)
    assert why in str(info.value)


def test_parse_networks_names_every_bad_entry_with_its_position() -> None:
    with pytest.raises(ValueError, match="entry 1: 'nope'") as info:
        parse_networks(["10.0.0.0/8", "nope", "::1", "10.1.2.3/8"])
    assert "entry 3: '10.1.2.3/8' has host bits set" in str(info.value)
    assert "entry 0" not in str(info.value)
    assert parse_networks([]) == []


# --- parse_address ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("10.1.2.3", "10.1.2.3"),
        (" 10.1.2.3 ", "10.1.2.3"),
        ("10.1.2.3:8080", "10.1.2.3"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("[::ffff:10.0.0.1]:80", "10.0.0.1"),
        ("::ffff:a00:1", "10.0.0.1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("::1", "::1"),
    ],
)
def test_parse_address(text: str, address: str) -> None:
    assert str(parse_address(text)) == address


@pytest.mark.parametrize(
    "text",
    [
        "",
        "unknown",
        "_hidden",
        "localhost",
        "10.1.2.3/32",
        "10.1.2.256",
        "010.1.2.3",
        "10.1.2.3:",
        "10.1.2.3:port",
        "10.1.2.3:123456",
        "2001:db8::1:443x",
        "[2001:db8::1",
        "[10.1.2.3]x",
        "[nope]",
        "1.2.3.4 5.6.7.8",
        "\x00",
        "١٠.١.٢.٣",  # Arabic-Indic digits
    ],
)
def test_parse_address_refuses(text: str) -> None:
    assert parse_address(text) is None


# --- NetworkAllowlist ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.0", False),
        ("9.255.255.255", False),
        ("192.168.1.1", True),
        ("192.168.1.2", False),
        ("2001:db8::1", True),
        ("2001:db8:ffff:ffff::1", True),
        ("2001:db9::1", False),
        ("::ffff:10.1.2.3", True),  # IPv4-mapped: checked as the IPv4 address it carries
        ("::ffff:11.0.0.1", False),
        ("[2001:db8::1]:443", True),
        ("fe80::1%eth0", False),
        ("", False),
        ("junk", False),
        (None, False),
    ],
)
def test_allows(address: str | None, allowed: bool) -> None:
    allowlist = NetworkAllowlist.from_entries(["10.0.0.0/8", "192.168.1.1", "2001:db8::/32"])
    assert allowlist.allows(address) is allowed


def test_allows_parsed_addresses_too() -> None:
    allowlist = NetworkAllowlist.from_entries(["10.0.0.0/8"])
    assert allowlist.allows(ipaddress.ip_address("10.0.0.1"))
    assert allowlist.allows(ipaddress.ip_address("::ffff:10.0.0.1"))
    assert not allowlist.allows(ipaddress.ip_address("11.0.0.1"))


def test_empty_allowlist_allows_nobody() -> None:
    assert not NOBODY
    for address in ("127.0.0.1", "::1", "0.0.0.0", "10.0.0.1"):
        assert not NOBODY.allows(address)


def test_default_is_loopback_only() -> None:
    loopback = NetworkAllowlist.from_entries(LOOPBACK_NETWORKS)
    assert loopback
    for address in ("127.0.0.1", "127.255.255.254", "::1", "::ffff:127.0.0.1"):
        assert loopback.allows(address), address
    for address in ("10.0.0.1", "0.0.0.0", "::", "::2", "128.0.0.1", "169.254.0.1", "fe80::1"):
        assert not loopback.allows(address), address


def test_versions_never_cross() -> None:
    all_v6 = NetworkAllowlist.from_entries(["::/0"])
    all_v4 = NetworkAllowlist.from_entries(["0.0.0.0/0"])
    assert all_v6.allows("2001:db8::1")
    assert not all_v6.allows("10.0.0.1")
    assert not all_v6.allows("::ffff:10.0.0.1")  # an IPv4 client, whatever socket family carried it
    assert all_v4.allows("::ffff:10.0.0.1")
    assert not all_v4.allows("::1")
    assert not all_v4.allows("::a00:1")  # IPv4-compatible (deprecated) is IPv6, not mapped


def test_mapped_network_entries_match_plain_ipv4() -> None:
    allowlist = NetworkAllowlist.from_entries(["::ffff:10.0.0.0/104"])
    assert allowlist.allows("10.9.9.9")
    assert allowlist.allows("::ffff:10.9.9.9")
    assert not allowlist.allows("11.0.0.1")


def test_repr_lists_the_networks() -> None:
    assert repr(NetworkAllowlist.from_entries(["10.0.0.1", "::1"])) == "NetworkAllowlist([10.0.0.1/32, ::1/128])"


def test_from_entries_refuses_bad_entries() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300'"):
        NetworkAllowlist.from_entries(["10.0.0.0/8", "10.0.0.300"])


# --- client_address: the peer when it is not a trusted proxy ---------------------------------


def addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    "forwarded",
    [
        [],
        ["10.0.0.1"],
        ["192.0.2.9"],
        ["192.0.2.9, 10.0.0.1"],
        ["junk"],
        ["127.0.0.1", "10.0.0.1"],
    ],
)
def test_untrusted_peer_is_the_client_whatever_the_header_says(forwarded: list[str]) -> None:
    assert client_address("203.0.113.7", forwarded, PROXIES) == Client(addr("203.0.113.7"), "203.0.113.7")


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert client_address("10.0.0.1", ["192.0.2.9"], NOBODY) == Client(addr("10.0.0.1"), "10.0.0.1")


def test_mapped_peer_is_its_ipv4_address() -> None:
    assert client_address("::ffff:203.0.113.7", [], NOBODY) == Client(addr("203.0.113.7"), "203.0.113.7")


def test_ipv6_peer() -> None:
    assert client_address("2001:db8::7", ["10.9.9.9"], PROXIES) == Client(addr("2001:db8::7"), "2001:db8::7")


@pytest.mark.parametrize("peer", [None, "", "testclient", "unix:/run/zguard.sock"])
def test_peer_without_an_ip_address_has_no_client_address(peer: str | None) -> None:
    client = client_address(peer, ["192.0.2.9"], PROXIES)
    assert client.address is None
    assert client.shown.startswith("unknown (the connection has no IP peer address")
    assert not client.forwarded


# --- client_address: behind trusted proxies --------------------------------------------------


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        (["192.0.2.9"], "192.0.2.9"),
        (["192.0.2.9, 10.0.0.2"], "192.0.2.9"),  # a second trusted proxy is skipped
        (["192.0.2.9,10.0.0.2,10.0.0.3"], "192.0.2.9"),
        (["6.6.6.6, 192.0.2.9"], "192.0.2.9"),  # the client's own claim, left of it, is ignored
        (["10.0.0.5, 6.6.6.6, 192.0.2.9, 10.0.0.2"], "192.0.2.9"),
        (["6.6.6.6", "192.0.2.9"], "192.0.2.9"),  # several headers read as one list, in order
        (["6.6.6.6", "192.0.2.9", "10.0.0.2"], "192.0.2.9"),
        (["junk, 192.0.2.9"], "192.0.2.9"),  # junk left of the client is never looked at
        (["192.0.2.9,"], "192.0.2.9"),  # empty list elements are skipped
        ([",, 192.0.2.9 ,, "], "192.0.2.9"),
        (["", "192.0.2.9", ""], "192.0.2.9"),
        (["192.0.2.9:5123"], "192.0.2.9"),
        (["[2001:db8::9]:443"], "2001:db8::9"),
        (["2001:db8::9, 2001:db8:ffff::1"], "2001:db8::9"),
        (["::ffff:192.0.2.9"], "192.0.2.9"),
        (["::ffff:10.0.0.2, 192.0.2.9"], "192.0.2.9"),
    ],
)
def test_trusted_proxy_right_most_untrusted_address_is_the_client(forwarded: list[str], client: str) -> None:
    assert client_address("10.0.0.1", forwarded, PROXIES) == Client(addr(client), client, forwarded=True)


def test_mapped_trusted_peer_reads_the_header() -> None:
    assert client_address("::ffff:10.0.0.1", ["192.0.2.9"], PROXIES).address == addr("192.0.2.9")


def test_ipv6_trusted_peer_reads_the_header() -> None:
    assert client_address("2001:db8:ffff::1", ["192.0.2.9"], PROXIES).address == addr("192.0.2.9")


def test_trusted_proxy_without_header_is_itself_the_client() -> None:
    assert client_address("10.0.0.1", [], PROXIES) == Client(addr("10.0.0.1"), "10.0.0.1")
    assert client_address("10.0.0.1", ["", " , "], PROXIES) == Client(addr("10.0.0.1"), "10.0.0.1")


def test_all_trusted_hops_make_the_left_most_the_client() -> None:
    assert client_address("10.0.0.1", ["10.0.0.3, 10.0.0.2"], PROXIES) == Client(
        addr("10.0.0.3"), "10.0.0.3", forwarded=True
    )


@pytest.mark.parametrize(
    ("forwarded", "entry", "proxy"),
    [
        (["junk"], "'junk'", "10.0.0.1"),
        (["unknown"], "'unknown'", "10.0.0.1"),
        (["192.0.2.9, _obfuscated"], "'_obfuscated'", "10.0.0.1"),
        (["192.0.2.9, junk, 10.0.0.2"], "'junk'", "10.0.0.2"),  # named: the proxy that passed it on
        (["192.0.2.9", "host.example"], "'host.example'", "10.0.0.1"),
        (["192.0.2.9, 10.0.0.2/32"], "'10.0.0.2/32'", "10.0.0.1"),
        (["x" * 500], "'" + "x" * 64 + "...'", "10.0.0.1"),
    ],
)
def test_unparseable_entry_fails_closed(forwarded: list[str], entry: str, proxy: str) -> None:
    """Junk where the client's address should be: no address at all, so no allowlist admits it."""
    client = client_address("10.0.0.1", forwarded, PROXIES)
    assert client.address is None
    assert client.forwarded
    assert client.shown == f"unknown (X-Forwarded-For entry {entry} from trusted proxy {proxy} is not an IP address)"
    everyone = NetworkAllowlist.from_entries(["0.0.0.0/0", "::/0"])
    assert not everyone.allows(client.address)


def test_many_entries_are_walked_only_to_the_client() -> None:
    forwarded = [", ".join(["junk"] * 10_000 + ["192.0.2.9", "10.0.0.2"])]
    assert client_address("10.0.0.1", forwarded, PROXIES).address == addr("192.0.2.9")
