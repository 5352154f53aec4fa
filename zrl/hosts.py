"""Node addresses: the one a worker binds and advertises for `--host auto` (one that other nodes reach), whether
an address is loopback, and which interface holds an address. Imports nothing from zrl, so workers and the
controller both use it."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

_SIOCGIFADDR = 0x8915


def is_loopback(host: str) -> bool:
    """True for a loopback address or name (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def interface_addresses() -> list[str]:
    """The IPv4 address of every network interface that has one (Linux), loopback included."""
    return list(_interfaces().values())


def interface_of(address: str) -> str | None:
    """The name of the network interface that holds the IPv4 `address` (Linux), or None."""
    return next((name for name, held in _interfaces().items() if held == address), None)


def _interfaces() -> dict[str, str]:
    """Interface name -> IPv4 address, for every interface that has one."""
    found = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on this interface
            found[name] = socket.inet_ntoa(packed[20:24])
    return found


def node_address() -> str:
    """This node's address for other nodes: its host name's address, unless that is loopback (a stock Debian
    /etc/hosts maps the host name to 127.0.1.1); then the first non-loopback interface address."""
    hostname = socket.gethostname()
    try:
        by_name = socket.gethostbyname(hostname)
    except OSError:
        by_name = ""
    if by_name and not is_loopback(by_name):
        return by_name
    others = [address for address in interface_addresses() if not is_loopback(address)]
    if others:
        return others[0]
    raise RuntimeError(f"worker_host=auto: host {hostname!r} resolves to {by_name or 'nothing'} and no network "
                       "interface has a non-loopback IPv4 address, so workers on other nodes could not reach this "
                       "one; set worker_host to an address they can reach (127.0.0.1 works on a single node only)")
