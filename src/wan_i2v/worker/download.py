"""One guarded download: a GET through the address guard, with deadlines and a byte cap, its body handed
over chunk by chunk as it arrives. Images and LoRA files both come through here; every failure is an
InputError that names the job's field and shows the URL without its query string (it may hold a token).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from .. import __version__
from ..errors import InputError
from .netguard import BlockedAddressError, GuardedSession, UrlPolicy, shown_url

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    etag: str | None
    size: int  # body bytes handed over (0 for an answer whose body was not read)


def download(
    field: str,
    url: str,
    policy: UrlPolicy,
    limit: int,
    limit_text: str,
    write: Callable[[bytes], None],
    headers: dict[str, str] | None = None,
    bodiless: tuple[int, ...] = (),
) -> Answer:
    """GET `url` and pass its body to `write`; statuses in `bodiless` (a 304) return without a body.

    The body is read as it arrives (`read1`), so a server that trickles bytes still meets the total
    deadline, and a compressed body is capped by its decoded size. A body shorter than its
    Content-Length is an error (a truncated download). A watchdog holds the whole download, status
    line and headers included, to the total deadline: when it passes, the connection is shut down under
    the blocked read (a server sending a header byte just before each read timeout cannot hold the job).
    """
    where = url_shown(field, url)
    with policy.session() as session:
        watchdog = threading.Timer(policy.total_timeout_s, session.abort)
        watchdog.daemon = True
        watchdog.start()
        try:
            answer = _get(session, field, url, where, policy, limit, limit_text, write, headers, bodiless)
        except (InputError, OSError, HTTPError, http.client.HTTPException, requests.RequestException):
            if session.aborted:  # whatever the cut connection raised, the deadline is the cause
                raise InputError(_took_over(field, where, policy)) from None
            raise
        finally:
            watchdog.cancel()
        if session.aborted:  # the cut came as the end of a body without a declared length
            raise InputError(_took_over(field, where, policy))
        return answer


def url_shown(field: str, url: str) -> str:
    """The URL as messages show it (`shown_url`), or an InputError naming `field` for a URL whose port or
    host cannot even be parsed."""
    try:
        return shown_url(url)
    except ValueError as exc:
        raise InputError(
            f"{field}: not a valid URL ({exc}); allowed: http(s)://host[:port]/path with a host name or an IP "
            "address (IPv6 in brackets) and a port number up to 65535"
        ) from None


def _get(
    session: GuardedSession,
    field: str,
    url: str,
    where: str,
    policy: UrlPolicy,
    limit: int,
    limit_text: str,
    write: Callable[[bytes], None],
    headers: dict[str, str] | None,
    bodiless: tuple[int, ...],
) -> Answer:
    deadline = time.monotonic() + policy.total_timeout_s
    try:
        with session.get(
            url,
            stream=True,
            timeout=(policy.connect_timeout_s, policy.read_timeout_s),
            headers={"User-Agent": f"wan-i2v/{__version__}", **(headers or {})},
        ) as response:
            etag = response.headers.get("ETag")
            if response.status_code in bodiless:
                return Answer(response.status_code, etag, 0)
            if response.status_code != 200:
                raise InputError(f"{field}: downloading {where} failed with HTTP {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise InputError(f"{field}: {where} is {int(declared)} bytes; {limit_text}")
            size = 0
            while chunk := response.raw.read1(CHUNK_BYTES, decode_content=True):
                size += len(chunk)
                if size > limit:
                    raise InputError(f"{field}: {where} is larger than allowed; {limit_text}")
                if time.monotonic() > deadline:
                    raise InputError(_took_over(field, where, policy))
                write(chunk)
            encoded = response.headers.get("Content-Encoding", "identity") not in ("", "identity")
            if declared.isdigit() and not encoded and size != int(declared):
                raise InputError(f"{field}: the download of {where} ended after {size} of {declared} bytes")
            return Answer(200, etag, size)
    except BlockedAddressError as exc:
        raise InputError(f"{field}: {where} refused: {exc}") from None
    except requests.TooManyRedirects:
        raise InputError(f"{field}: {where} redirects more than {policy.max_redirects} times") from None
    except requests.exceptions.InvalidSchema:
        raise InputError(f"{field}: {where} redirects to a URL that is not http or https") from None
    except (requests.Timeout, requests.ConnectionError, ReadTimeoutError, ProtocolError) as exc:
        if not _timed_out(exc):
            raise InputError(f"{field}: could not connect to {where} ({type(exc).__name__})") from None
        raise InputError(
            f"{field}: {where} did not answer in time (connect {policy.connect_timeout_s:g} s, "
            f"read {policy.read_timeout_s:g} s)"
        ) from None
    except (requests.RequestException, HTTPError) as exc:
        raise InputError(f"{field}: could not download {where} ({type(exc).__name__})") from None


def _took_over(field: str, where: str, policy: UrlPolicy) -> str:
    return f"{field}: downloading {where} took over {policy.total_timeout_s:g} s"


def _timed_out(exc: Exception) -> bool:
    # A read timeout while streaming the body arrives as urllib3's own, or wrapped in a ConnectionError.
    return isinstance(exc, (requests.Timeout, ReadTimeoutError)) or any(
        isinstance(a, ReadTimeoutError) for a in exc.args
    )
