"""Where a finished MP4 goes: an S3-compatible bucket, a local directory, or inline base64.

Knows nothing of the model. Each function takes a finished file and returns where it can be fetched.
"""

from __future__ import annotations

import base64
import re
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

from ..bucket import BucketSettings, s3_client
from ..errors import StorageError
from ..files import written_whole
from .netguard import shown_url

CONTENT_TYPE = "video/mp4"
MULTIPART_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class StoredVideo:
    url: str
    location: str  # "s3", "local" or "inline"
    expires_at: str | None = None  # ISO 8601, for presigned URLs


def _safe_id(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", job_id)[:64] or "job"


def object_key(prefix: str, job_id: str, now: datetime) -> str:
    """`<prefix>YYYY/MM/DD/<job id>-<random>.mp4`: sorted by date, findable by job, not guessable."""
    return f"{prefix}{now:%Y/%m/%d}/{_safe_id(job_id)}-{secrets.token_hex(16)}.mp4"  # 128 random bits


def local_name(job_id: str, now: datetime) -> str:
    """`YYYYMMDD-HHMMSS-<job id>-<random>.mp4`: one flat folder, newest last when sorted."""
    return f"{now:%Y%m%d-%H%M%S}-{_safe_id(job_id)}-{secrets.token_hex(3)}.mp4"


def upload_s3(path: Path, bucket: BucketSettings, key: str) -> StoredVideo:
    """Upload (multipart above 16 MB) with Content-Type video/mp4; return a presigned or public URL."""
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    client = s3_client(bucket)
    transfer = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES)
    where = f"bucket '{bucket.bucket_name}' at {shown_url(bucket.endpoint_url)}"
    tries = f" after {bucket.max_attempts} attempts" if bucket.max_attempts > 1 else ""
    try:
        client.upload_file(str(path), bucket.bucket_name, key, ExtraArgs={"ContentType": CONTENT_TYPE}, Config=transfer)
        if bucket.public_base_url:
            return StoredVideo(url=f"{bucket.public_base_url.rstrip('/')}/{quote(key)}", location="s3")
        url = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket.bucket_name, "Key": key}, ExpiresIn=bucket.url_expiry_s
        )
    except (ClientError, S3UploadFailedError) as exc:
        # upload_file wraps the ClientError of the failing call in S3UploadFailedError.
        client_error = exc if isinstance(exc, ClientError) else exc.__context__
        code = client_error.response.get("Error", {}).get("Code") if isinstance(client_error, ClientError) else None
        raise StorageError(f"upload to {where} failed{tries}: {code or type(exc).__name__}") from None
    except (ConnectTimeoutError, ReadTimeoutError):
        raise StorageError(f"upload to {where} failed{tries}: no answer within {bucket.timeout_s:g} s") from None
    except EndpointConnectionError:
        raise StorageError(f"upload to {where} failed{tries}: could not connect") from None
    except (BotoCoreError, OSError) as exc:
        raise StorageError(f"upload to {where} failed{tries}: {type(exc).__name__}") from None
    expires = datetime.now(timezone.utc) + timedelta(seconds=bucket.url_expiry_s)
    return StoredVideo(url=url, location="s3", expires_at=expires.isoformat(timespec="seconds"))


def save_local(path: Path, output_dir: Path, name: str) -> StoredVideo:
    """Copy into the output directory under `name`; the file appears whole or not at all."""
    final = output_dir / name
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with written_whole(final) as partial:
            shutil.copyfile(path, partial)
    except OSError as exc:
        raise StorageError(f"could not write the video to {output_dir}: {exc.strerror or exc}") from None
    return StoredVideo(url=final.resolve().as_uri(), location="local")


def inline_data_uri(path: Path, max_mb: float) -> StoredVideo:
    """The MP4 as a data: URI, refused above `max_mb` (base64 adds a third; RunPod caps responses)."""
    size = path.stat().st_size
    if size > max_mb * 1024 * 1024:
        raise StorageError(
            f"return_base64: the video is {size / 1024 / 1024:.1f} MB, over the {max_mb:g} MB inline cap; "
            "use fewer frames or 480p, or leave return_base64 off to get a URL"
        )
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return StoredVideo(url=f"data:{CONTENT_TYPE};base64,{encoded}", location="inline")
