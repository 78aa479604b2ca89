"""Where DLM may connect when a caller, not an admin's storage, names the place: a delivery's inline S3
endpoint, and the webhooks notifications go to (docs/security.md#outbound-connections).

Such an endpoint is resolved, and every address it resolves to must be a public one, unless
``DLM_OUTBOUND_ALLOW`` lists it: loopback, link-local (169.254.169.254, the cloud metadata service),
private, shared, multicast and reserved ranges are refused, so that a reader cannot make DLM probe the
services beside it. The connection then goes to the addresses that were checked (an S3 client resolves
through ``dlm.transfer.s3.CheckedResolver``; a webhook is sent to the checked address), so a name that resolves
differently a moment later (DNS rebinding) gains nothing. A refusal says "unreachable", and what a peer
answered is never quoted back to the caller.
"""

import asyncio
import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from dlm.errors import InvalidQueryParameters

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Unreachable(OSError):
    """An endpoint DLM will not connect to: nothing is said of what, if anything, is there."""


def parse_endpoint(url: str, field: str) -> SplitResult:
    """An http(s) URL whose host and port parse (a 422 naming ``field`` otherwise, never a 500)."""
    try:
        parts = urlsplit(str(url).strip())
        port = parts.port  # raises for a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise InvalidQueryParameters(f"{field}: {url!r} is not a URL DLM can use ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidQueryParameters(f"{field}: {url!r} must be an http:// or https:// URL with a host")
    if port == 0:
        raise InvalidQueryParameters(f"{field}: {url!r}: port 0 is not a port DLM can connect to")
    return parts


def default_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme.lower() == "https" else 80)


class OutboundPolicy:
    """Which addresses caller-named endpoints may reach: public ones, and what ``allow`` lists
    (addresses, networks in CIDR notation, or host names, each optionally with ``:port``)."""

    def __init__(self, allow: list[str] | None = None) -> None:
        self.networks: list[tuple[Network, int | None]] = []
        self.hosts: set[tuple[str, int | None]] = set()
        for entry in allow or []:
            target, port = _split_port(entry)
            try:
                self.networks.append((ipaddress.ip_network(target.strip("[]"), strict=False), port))
            except ValueError:
                self.hosts.add((target.lower(), port))

    def permits(self, host: str, port: int, address: Address) -> bool:
        if (host.lower(), None) in self.hosts or (host.lower(), port) in self.hosts:
            return True
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        for candidate in filter(None, (address, mapped)):
            if any(candidate in network and allowed in (None, port) for network, allowed in self.networks):
                return True
        public = (mapped or address).is_global and not (mapped or address).is_multicast
        return public

    async def resolve(self, host: str, port: int) -> list[Address]:
        """The addresses of ``host`` that DLM may connect to; Unreachable if it resolves to any other (a
        name with one private address among public ones is refused as a whole: it is not one place)."""
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise Unreachable(f"{host}:{port} is unreachable (the name does not resolve)") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in found))
        if not addresses or not all(self.permits(host, port, address) for address in addresses):
            raise Unreachable(
                f"{host}:{port} is unreachable from DLM: it is not a public address (DLM_OUTBOUND_ALLOW lists "
                "the private ones DLM may reach)"
            )
        return addresses

    async def check_url(self, url: str, field: str) -> list[Address]:
        parts = parse_endpoint(url, field)
        try:
            return await self.resolve(parts.hostname or "", default_port(parts))
        except Unreachable as exc:
            raise InvalidQueryParameters(f"{field}: {exc}") from None


def _split_port(entry: str) -> tuple[str, int | None]:
    entry = entry.strip()
    if entry.startswith("["):  # [::1]:9000
        address, _, rest = entry[1:].partition("]")
        return address, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:  # host:port, 10.0.0.0/8:443
        target, _, port = entry.partition(":")
        if port.isdigit():
            return target, int(port)
    return entry, None
