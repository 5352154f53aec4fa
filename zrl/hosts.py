"""Node addresses: the one a worker binds and advertises for `--host auto` (one that other nodes reach), whether
an address is loopback or the wildcard, and which interface holds an address. Imports nothing from zrl, so workers
and the controller both use it."""

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


def is_unspecified(host: str) -> bool:
    """True for the wildcard address (0.0.0.0, ::): a socket may bind it, but no peer can connect to it."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def unreachable_host_reason(host: str) -> str | None:
    """Why no other process could connect to a worker that advertises `host`, or None."""
    if is_unspecified(host):
        return (f"{host} is the wildcard address: a worker binds it but cannot advertise it, since no peer can "
                "connect to it; give an address the workers reach (auto: each node's own address)")
    return None


def source_address_toward(host: str, port: int) -> str | None:
    """The local address this node would send from to reach `host` (the kernel's route choice), or None when
    `host` does not resolve or no route leads there. A UDP socket's connect sends nothing."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port or 9))
            return sock.getsockname()[0]
    except OSError:
        return None


def node_address(toward: tuple[str, int] | None = None) -> tuple[str, str]:
    """This node's address for other nodes, and why it was chosen, in order of preference:
    - the address of the interface that routes to `toward` (the name service every worker reaches), when that
      host is on another node;
    - the host name's address, unless it is loopback (a stock Debian /etc/hosts maps the host name to 127.0.1.1);
    - the first non-loopback interface address."""
    if toward is not None and not is_loopback(toward[0]):
        source = source_address_toward(*toward)
        if source is not None and not is_loopback(source):
            interface = interface_of(source) or "an interface"
            return source, f"the address of {interface}, which routes to the name service at {toward[0]}"
    hostname = socket.gethostname()
    try:
        by_name = socket.gethostbyname(hostname)
    except OSError:
        by_name = ""
    if by_name and not is_loopback(by_name):
        return by_name, f"the address of host name {hostname}"
    others = [(name, address) for name, address in _interfaces().items() if not is_loopback(address)]
    if others:
        name, address = others[0]
        return address, (f"the first non-loopback interface ({name}), since host name {hostname} resolves to "
                         f"{by_name or 'nothing'} and no remote name service address was given to route to")
    raise RuntimeError(f"worker_host=auto: host {hostname!r} resolves to {by_name or 'nothing'} and no network "
                       "interface has a non-loopback IPv4 address, so workers on other nodes could not reach this "
                       "one; set worker_host to an address they can reach (127.0.0.1 works on a single node only)")
