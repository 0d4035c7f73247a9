"""The S3-compatible bucket both sides use: the worker uploads videos to it, the client uploads large
input images. RunPod's own variable names, read plainly; boto3 is imported only when a client is made."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .env import env_float, env_int
from .errors import SettingsError

S3_CONFIG_KEYS = ("accessId", "accessSecret", "bucketName", "endpointUrl")


@dataclass(frozen=True)
class BucketSettings:
    """An S3-compatible bucket. RunPod's own variable names, plus BUCKET_NAME."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket_name: str
    region: str = "us-east-1"
    prefix: str = "wan-i2v/"
    url_expiry_s: int = 24 * 3600
    public_base_url: str | None = None
    addressing_style: str = "path"
    timeout_s: float = 60.0  # connect and read timeout of each request
    max_attempts: int = 5  # tries per request; transient errors (5xx, timeouts, resets) back off and retry

    def __repr__(self) -> str:  # never print the secret key
        return f"BucketSettings(endpoint_url={self.endpoint_url!r}, bucket_name={self.bucket_name!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BucketSettings | None:
        names = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME")
        present = [n for n in names if env.get(n)]
        if not present:
            return None
        if len(present) < len(names):
            missing = ", ".join(n for n in names if n not in present)
            raise SettingsError(f"bucket storage is half configured: {missing} not set (set all four or none)")
        expiry = env_int(env, "BUCKET_URL_EXPIRY", cls.url_expiry_s)
        if not 1 <= expiry <= 7 * 24 * 3600:
            raise SettingsError(f"BUCKET_URL_EXPIRY={expiry}: allowed 1..604800 seconds (S3's 7-day limit)")
        style = env.get("BUCKET_ADDRESSING_STYLE", cls.addressing_style)
        if style not in ("path", "virtual", "auto"):
            raise SettingsError(f"BUCKET_ADDRESSING_STYLE={style!r}: allowed path, virtual, auto")
        timeout = env_float(env, "BUCKET_TIMEOUT_S", cls.timeout_s)
        if not 0 < timeout <= 600:
            raise SettingsError(f"BUCKET_TIMEOUT_S={timeout:g}: allowed more than 0 and up to 600 seconds")
        attempts = env_int(env, "BUCKET_MAX_ATTEMPTS", cls.max_attempts)
        if not 1 <= attempts <= 10:
            raise SettingsError(f"BUCKET_MAX_ATTEMPTS={attempts}: allowed 1..10")
        return cls(
            endpoint_url=env["BUCKET_ENDPOINT_URL"],
            access_key_id=env["BUCKET_ACCESS_KEY_ID"],
            secret_access_key=env["BUCKET_SECRET_ACCESS_KEY"],
            bucket_name=env["BUCKET_NAME"],
            region=env.get("BUCKET_REGION", cls.region),
            prefix=env.get("BUCKET_PREFIX", cls.prefix),
            url_expiry_s=expiry,
            public_base_url=env.get("BUCKET_PUBLIC_URL") or None,
            addressing_style=style,
            timeout_s=timeout,
            max_attempts=attempts,
        )

    @classmethod
    def for_job(cls, s3_config: Mapping[str, str], base: BucketSettings | None) -> BucketSettings:
        """The bucket named by a job's top-level `s3Config` {accessId, accessSecret, bucketName, endpointUrl}.

        Region, prefix and URL expiry come from the configured bucket, if any.
        """
        bad = [k for k in S3_CONFIG_KEYS if not isinstance(s3_config.get(k), str) or not s3_config.get(k)]
        if bad:
            raise SettingsError(
                f"s3Config: {', '.join(bad)} missing or not a string; needs {', '.join(S3_CONFIG_KEYS)}"
            )
        job_bucket = {
            "endpoint_url": s3_config["endpointUrl"],
            "access_key_id": s3_config["accessId"],
            "secret_access_key": s3_config["accessSecret"],
            "bucket_name": s3_config["bucketName"],
            "public_base_url": None,  # a public base URL belongs to the configured bucket, not the job's
        }
        return replace(base, **job_bucket) if base else cls(**job_bucket)


@functools.lru_cache(maxsize=8)
def s3_client(bucket: BucketSettings):
    """A boto3 S3 client for the bucket (timeouts, retries, addressing style); boto3 is imported only here."""
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        connect_timeout=min(10.0, bucket.timeout_s),
        read_timeout=bucket.timeout_s,
        retries={"total_max_attempts": bucket.max_attempts, "mode": "standard"},
        s3={"addressing_style": bucket.addressing_style},
    )
    return boto3.client(
        "s3",
        endpoint_url=bucket.endpoint_url,
        aws_access_key_id=bucket.access_key_id,
        aws_secret_access_key=bucket.secret_access_key,
        region_name=bucket.region,
        config=config,
    )
