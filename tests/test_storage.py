import base64
import re
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from helpers import bucket_keys, free_port, s3_client

from wan_i2v.bucket import BucketSettings
from wan_i2v.errors import SettingsError, StorageError
from wan_i2v.worker.settings import Settings
from wan_i2v.worker.storage import inline_data_uri, local_name, object_key, save_local, upload_s3

NOW = datetime(2026, 11, 22, 15, 30, tzinfo=timezone.utc)


@pytest.fixture
def mp4(tmp_path):
    path = tmp_path / "video.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64)
    return path


def test_object_keys_sort_by_date_name_the_job_and_cannot_be_guessed():
    key = object_key("wan-i2v/", "abc-123/../x", NOW)
    assert re.fullmatch(r"wan-i2v/2026/11/22/abc-123____x-[0-9a-f]{32}\.mp4", key)
    assert object_key("p/", "j", NOW) != object_key("p/", "j", NOW)
    assert re.fullmatch(r"20261122-153000-job_1-[0-9a-f]{6}\.mp4", local_name("job 1", NOW))


def test_upload_sets_content_type_and_presigned_url_downloads(bucket_env, mp4):
    bucket = BucketSettings.from_env(bucket_env)
    stored = upload_s3(mp4, bucket, "wan-i2v/2026/11/22/job-1.mp4")
    assert stored.location == "s3" and stored.expires_at
    response = requests.get(stored.url, timeout=10)
    assert response.status_code == 200 and response.content == mp4.read_bytes()
    assert response.headers["Content-Type"] == "video/mp4"
    assert "X-Amz-Expires=86400" in stored.url
    assert "test-secret-key-do-not-log" not in stored.url


def test_large_files_go_up_in_parts(bucket_env, tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\1" * (17 * 1024 * 1024))
    bucket = BucketSettings.from_env(bucket_env)
    upload_s3(big, bucket, "big.mp4")
    head = s3_client(bucket.endpoint_url).head_object(Bucket=bucket.bucket_name, Key="big.mp4")
    assert head["ContentLength"] == big.stat().st_size and "-" in head["ETag"]  # a multipart ETag
    assert head["ContentType"] == "video/mp4"


def test_public_base_url_and_expiry_are_honoured(bucket_env, mp4):
    public = BucketSettings.from_env({**bucket_env, "BUCKET_PUBLIC_URL": "https://cdn.example.com/videos/"})
    assert upload_s3(mp4, public, "a b.mp4").url == "https://cdn.example.com/videos/a%20b.mp4"
    short = BucketSettings.from_env({**bucket_env, "BUCKET_URL_EXPIRY": "600"})
    stored = upload_s3(mp4, short, "c.mp4")
    query = parse_qs(urlsplit(stored.url).query)
    assert query["X-Amz-Expires"] == ["600"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - signed_at).total_seconds()) < 60
    expires = datetime.fromisoformat(stored.expires_at)
    assert abs((expires - signed_at).total_seconds() - 600) <= 2  # the reported expiry is the signed one


def test_missing_bucket_gives_a_clear_error_without_secrets(bucket_env, mp4):
    bucket = BucketSettings.from_env({**bucket_env, "BUCKET_NAME": "no-such-bucket"})
    with pytest.raises(StorageError) as caught:
        upload_s3(mp4, bucket, "x.mp4")
    assert "bucket 'no-such-bucket'" in str(caught.value) and "NoSuchBucket" in str(caught.value)
    assert "test-secret-key-do-not-log" not in str(caught.value)


def test_bucket_settings_need_all_four_variables():
    assert BucketSettings.from_env({}) is None
    with pytest.raises(SettingsError, match="BUCKET_SECRET_ACCESS_KEY, BUCKET_NAME not set"):
        BucketSettings.from_env({"BUCKET_ENDPOINT_URL": "http://x", "BUCKET_ACCESS_KEY_ID": "a"})
    with pytest.raises(SettingsError, match="BUCKET_URL_EXPIRY"):
        BucketSettings.from_env(
            {
                "BUCKET_ENDPOINT_URL": "http://x",
                "BUCKET_ACCESS_KEY_ID": "a",
                "BUCKET_SECRET_ACCESS_KEY": "b",
                "BUCKET_NAME": "c",
                "BUCKET_URL_EXPIRY": "999999999",
            }
        )


def test_secret_key_is_not_in_the_settings_repr(bucket_env):
    settings = Settings.from_env(bucket_env)
    assert "test-secret-key-do-not-log" not in repr(settings)


def test_job_s3_config_overrides_the_bucket(bucket_env):
    base = BucketSettings.from_env({**bucket_env, "BUCKET_PREFIX": "p/"})
    job = {"accessId": "id", "accessSecret": "s", "bucketName": "other", "endpointUrl": "http://e"}
    bucket = BucketSettings.for_job(job, base)
    assert (bucket.bucket_name, bucket.endpoint_url, bucket.access_key_id, bucket.prefix) == (
        "other",
        "http://e",
        "id",
        "p/",
    )
    assert BucketSettings.for_job(job, None).bucket_name == "other"
    with pytest.raises(SettingsError, match=r"^s3Config: bucketName missing"):
        BucketSettings.for_job({**job, "bucketName": ""}, None)


def test_local_save_is_whole_or_nothing(tmp_path, mp4):
    stored = save_local(mp4, tmp_path / "out", "a.mp4")
    assert stored.url == (tmp_path / "out" / "a.mp4").resolve().as_uri()
    assert (tmp_path / "out" / "a.mp4").read_bytes() == mp4.read_bytes()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.mp4"]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="could not write the video"):
        save_local(mp4, blocker / "out", "b.mp4")


def test_inline_result_and_its_cap(mp4):
    stored = inline_data_uri(mp4, max_mb=1)
    assert stored.url.startswith("data:video/mp4;base64,")
    assert base64.b64decode(stored.url.split(",", 1)[1]) == mp4.read_bytes()
    with pytest.raises(StorageError, match=r"^return_base64: the video is 0.0 MB, over the 0.001 MB inline cap"):
        inline_data_uri(mp4, max_mb=0.001)


def bucket_at(env: dict, endpoint: str, **extra) -> BucketSettings:
    return BucketSettings.from_env({**env, "BUCKET_ENDPOINT_URL": endpoint, **extra})


def test_a_bucket_answering_500_is_retried_with_backoff_then_succeeds(bucket_env, faulty_s3, mp4):
    faulty_s3.fail_next = 2
    stored = upload_s3(mp4, bucket_at(bucket_env, faulty_s3.url, BUCKET_MAX_ATTEMPTS="3"), "flaky.mp4")
    puts = [r for r in faulty_s3.requests if r[0] == "PUT"]
    assert len(puts) == 3, "the upload was not retried twice"
    assert puts[2][2] - puts[0][2] > 0.01, "no backoff between attempts"
    assert requests.get(stored.url, timeout=30).content == mp4.read_bytes()


def test_a_bucket_that_keeps_failing_gives_a_clear_error_and_leaves_no_object(bucket_env, faulty_s3, mp4):
    faulty_s3.fail_next = 10**6
    with pytest.raises(StorageError) as caught:
        upload_s3(mp4, bucket_at(bucket_env, faulty_s3.url, BUCKET_MAX_ATTEMPTS="3"), "down.mp4")
    assert str(caught.value) == (
        f"upload to bucket '{bucket_env['BUCKET_NAME']}' at {faulty_s3.url} failed after 3 attempts: InternalError"
    )
    assert len([r for r in faulty_s3.requests if r[0] == "PUT"]) == 3
    assert bucket_keys(bucket_env) == [] and bucket_env["BUCKET_SECRET_ACCESS_KEY"] not in str(caught.value)


def test_slow_bucket_times_out_retries_and_gives_a_clear_error(bucket_env, faulty_s3, mp4):
    faulty_s3.stall_s = 2.0
    target = bucket_at(bucket_env, faulty_s3.url, BUCKET_MAX_ATTEMPTS="2", BUCKET_TIMEOUT_S="0.5")
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"failed after 2 attempts: no answer within 0.5 s$"):
        upload_s3(mp4, target, "slow.mp4")
    assert time.monotonic() - started < 10
    assert len(faulty_s3.requests) == 2


def test_an_unreachable_bucket_gives_a_clear_error_after_its_attempts(bucket_env, mp4):
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StorageError) as caught:
        upload_s3(mp4, bucket_at(bucket_env, closed, BUCKET_MAX_ATTEMPTS="2"), "x.mp4")
    assert str(caught.value) == (
        f"upload to bucket '{bucket_env['BUCKET_NAME']}' at {closed} failed after 2 attempts: could not connect"
    )


def test_disk_full_while_saving_leaves_no_partial_file(tmp_path, mp4):
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip.mp4.partial").symlink_to("/dev/full")
    with pytest.raises(StorageError, match=f"could not write the video to {out}: No space left on device"):
        save_local(mp4, out, "clip.mp4")
    assert list(out.iterdir()) == []
