"""Which addresses a job's image URL may reach: the public internet, plus what the operator allows.

A public endpoint fetches URLs chosen by strangers from inside a cloud network, so an unchecked fetch
reaches internal services and the metadata service that hands out credentials (SSRF). The check
runs inside the connection itself: the host is resolved once, every address is checked, and the
socket connects to an address that was checked. A DNS answer that changes between a check and the
connect (rebinding) therefore cannot slip through, and each redirect, being a new connection, is
checked the same way. Proxies from the environment are ignored: they would hide the real target.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection as urllib3_connection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# (host, port) -> the IP addresses the host resolves to, as strings.
Resolver = Callable[[str, int], list[str]]

# Instance metadata services (AWS, GCP and Azure share 169.254.169.254; AWS IPv6; Alibaba; Oracle).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)


class BlockedAddressError(Exception):
    """The URL's host is, or resolves to, an address the policy refuses. Not an OSError on purpose:
    urllib3 must not mistake it for a network error and retry or wrap it."""


class InvalidHostError(BlockedAddressError):
    """The URL's host name cannot be looked up at all (an empty label, one over 63 characters, a character
    IDNA refuses): refused like a blocked address, so that it reaches the caller as an input error."""


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal(address: IPAddress) -> str | None:
    """Why an address may not be fetched from by default, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for kind in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{kind}"):
            article = "an" if kind[0] in "aeiou" else "a"
            return f"{article} {kind.replace('_', '-')} address"
    if not address.is_global:
        return "not a public address"
    return None


def shown_url(url: str) -> str:
    """A URL for messages and logs: no query string or credentials (presigned URLs carry secrets there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True)
class UrlPolicy:
    """Addresses and limits for fetching job images.

    `allow` names hosts, addresses or networks (CIDR) that may be fetched from although they are not
    public, for an operator whose images live on an internal server (setting WAN_URL_ALLOW).
    """

    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver, compare=False)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    total_timeout_s: float = 60.0
    max_redirects: int = 3

    @classmethod
    def from_allow_list(cls, text: str, **limits) -> UrlPolicy:
        """Parse WAN_URL_ALLOW: comma-separated host names, IP addresses or CIDR networks."""
        hosts, networks = set(), []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                if not all(c.isalnum() or c in ".-_" for c in item):
                    raise ValueError(
                        f"WAN_URL_ALLOW: {item!r} is neither a host name, an IP address nor a network"
                    ) from None
                hosts.add(item.lower().rstrip("."))
        return cls(allow_hosts=frozenset(hosts), allow_networks=tuple(networks), **limits)

    def with_resolver(self, resolver: Resolver) -> UrlPolicy:
        return replace(self, resolver=resolver)

    def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses to connect to for `host`; raises BlockedAddressError if any is refused."""
        name = host.strip("[]").lower().rstrip(".")
        try:
            found = [ipaddress.ip_address(name)]
        except ValueError:
            found = [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(name, port)]
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} has no address")
        if name in self.allow_hosts:
            return found
        for address in found:
            reason = refusal(address)
            if reason and not any(address in net for net in self.allow_networks):
                shown = "" if str(address) == name else f" resolves to {address}, which"
                raise BlockedAddressError(f"{host}{shown} is {reason}; only public addresses may be fetched")
        return found

    def check_url(self, url: str) -> list[IPAddress]:
        """Check a URL that another library will connect to (a job's s3Config endpoint).

        Raises ValueError (its text reads after the URL's name) for a URL that is not http(s), has a
        bad port or a host that does not resolve, and BlockedAddressError for a refused address.
        Unlike `session()`, this checks before the connect, not inside it, so it cannot rule out a
        DNS answer that changes in between.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError("port must be a number from 0 to 65535") from None
        try:
            return self.addresses(parts.hostname, port)
        except OSError:
            raise ValueError(f"host {parts.hostname} does not resolve") from None
        except UnicodeError:
            raise ValueError(f"host {parts.hostname} is not a valid host name") from None

    def connect(self, host: str, port: int, timeout, source_address=None, socket_options=None) -> socket.socket:
        """A socket to the first checked address of `host` that answers."""
        last_error: OSError | None = None
        for address in self.addresses(host, port):
            try:
                return urllib3_connection.create_connection(
                    (str(address), port), timeout, source_address=source_address, socket_options=socket_options
                )
            except OSError as exc:
                last_error = exc
        raise last_error or OSError(f"could not connect to {host}")

    def session(self) -> GuardedSession:
        """A requests session whose every connection, redirects included, goes through `connect`."""
        session = GuardedSession()
        session.trust_env = False  # no proxies or .netrc from the environment
        session.max_redirects = self.max_redirects
        adapter = _GuardedAdapter(self, session._opened)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session


class GuardedSession(requests.Session):
    """A session that can be cut off from another thread: `abort()` shuts down every connection it has
    opened, so a read blocked on a server that trickles its status line or headers fails at once (the
    read timeout cannot catch a server that sends a byte just before each timeout).

    Each connection's socket is kept as a duplicate descriptor of its own: TLS takes the original socket
    over (a new object, the old one closed), while a shutdown through the duplicate reaches the same
    connection, in the TLS handshake or after it, and cannot hit a descriptor number reused elsewhere.
    The duplicates are closed with the session."""

    def __init__(self) -> None:
        super().__init__()
        self._guard = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.aborted = False

    def _opened(self, sock: socket.socket) -> None:
        with self._guard:
            if self.aborted:
                sock.close()
                raise OSError("the download was stopped: its deadline passed")
            self._sockets.append(sock.dup())

    def abort(self) -> None:
        """Shut down every connection of this session (safe from any thread, more than once)."""
        with self._guard:
            self.aborted = True
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed by the peer
                    pass

    def close(self) -> None:
        super().close()
        with self._guard:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _guarded(
    base: type[HTTPConnection], policy: UrlPolicy, opened: Callable[[socket.socket], None]
) -> type[HTTPConnection]:
    class GuardedConnection(base):
        def _new_conn(self) -> socket.socket:  # same error mapping as urllib3's own
            try:
                sock = policy.connect(self._dns_host, self.port, self.timeout, self.source_address, self.socket_options)
                opened(sock)
                return sock
            except UnicodeError:  # IDNA refused the name before any lookup (a label empty or too long)
                raise InvalidHostError(f"{self.host} is not a valid host name") from None
            except socket.gaierror as exc:
                raise NameResolutionError(self.host, self, exc) from exc
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
            except OSError as exc:
                raise NewConnectionError(self, f"failed to establish a new connection: {exc}") from exc

    return GuardedConnection


class _GuardedAdapter(HTTPAdapter):
    def __init__(self, policy: UrlPolicy, opened: Callable[[socket.socket], None]):
        self._policy, self._opened = policy, opened
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        http_conn = _guarded(HTTPConnection, self._policy, self._opened)
        https_conn = _guarded(HTTPSConnection, self._policy, self._opened)
        http = type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn})
        https = type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})
        self.poolmanager.pool_classes_by_scheme = {"http": http, "https": https}
