"""One guarded download: a GET through the address guard, with deadlines and a byte cap, its body handed
over chunk by chunk as it arrives. Images and LoRA files both come through here; every failure is an
InputError that names the job's field and shows the URL without its query string (it may hold a token).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
from urllib3.exceptions import HTTPError, ProtocolError, ReadTimeoutError

from .. import __version__
from ..errors import InputError
from .netguard import BlockedAddressError, UrlPolicy, shown_url

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
    Content-Length is an error (a truncated download).
    """
    where = shown_url(url)
    deadline = time.monotonic() + policy.total_timeout_s
    with policy.session() as session:
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
                        raise InputError(f"{field}: downloading {where} took over {policy.total_timeout_s:g} s")
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


def _timed_out(exc: Exception) -> bool:
    # A read timeout while streaming the body arrives as urllib3's own, or wrapped in a ConnectionError.
    return isinstance(exc, (requests.Timeout, ReadTimeoutError)) or any(
        isinstance(a, ReadTimeoutError) for a in exc.args
    )
