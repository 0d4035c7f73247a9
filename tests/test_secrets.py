"""Secrets stay out of logs, errors and job output: real workers in RunPod's worker mode, a real bucket,
image URLs that carry presigned query strings, a job's own `s3Config`, and every log line they write
scanned afterwards."""

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import KEY, QUICKEST, bucket_keys, client_for, encode, picture, s3_client

from wan_i2v.ops.client import JobFailed

IMAGE_SECRET = "image-query-signature-0f1e2d"
JOB_S3_SECRET = "job-s3config-secret-9a8b7c"


@pytest.mark.load  # a dev endpoint, a bucket and several whole jobs at DEBUG (most of a minute)
def test_secrets_never_reach_logs_errors_or_outputs(
    endpoint_factory, bucket_env, http_server, s3_endpoint, tmp_path, monkeypatch
):
    for name, value in bucket_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WAN_URL_ALLOW", "127.0.0.1")  # the image server is on loopback
    monkeypatch.setenv("WAN_LOG_LEVEL", "DEBUG")  # our own code at its most talkative
    http_server.routes["/in.png"] = http_server.Route(body=encode(picture(), "PNG"))
    endpoint = endpoint_factory()
    client = client_for(endpoint)
    signed = f"?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={IMAGE_SECRET}"
    answers = []

    good = client.submit({**QUICKEST, "image": http_server.url + "/in.png" + signed, "prompt": "a lighthouse"})
    output = client.wait(good, timeout_s=600)
    answers.append(client.status(good))
    video_signature = parse_qs(urlsplit(output["video_url"]).query)["X-Amz-Signature"][0]

    missing = client.submit({**QUICKEST, "image": http_server.url + "/missing.png" + signed, "prompt": "x"})
    with pytest.raises(JobFailed, match="HTTP 404"):
        client.wait(missing, timeout_s=600)
    answers.append(client.status(missing))

    # A job's top-level s3Config (RunPod's form) wins over the worker's own bucket.
    job_bucket = "wan-secrets-job-s3config"
    s3_client(s3_endpoint).create_bucket(Bucket=job_bucket)
    s3_config = {
        "accessId": "job-access-id",
        "accessSecret": JOB_S3_SECRET,
        "bucketName": job_bucket,
        "endpointUrl": s3_endpoint,
    }
    body = {"input": {**QUICKEST, "image": http_server.url + "/in.png", "prompt": "y"}, "s3Config": s3_config}
    own_bucket = client.api.request("POST", f"{client.url}/run", body)["id"]
    assert client.wait(own_bucket, timeout_s=600)["storage"] == "s3"
    answers.append(client.status(own_bucket))
    landed = bucket_keys({"BUCKET_ENDPOINT_URL": s3_endpoint, "BUCKET_NAME": job_bucket})
    assert len(landed) == 1 and landed[0].startswith("wan-i2v/") and landed[0].endswith(".mp4")
    assert len(bucket_keys(bucket_env)) == 1, "the s3Config job's video went to the worker's own bucket"

    wrong = {**body, "s3Config": {**s3_config, "bucketName": "no-such-bucket"}}
    wrong_bucket = client.api.request("POST", f"{client.url}/run", wrong)["id"]
    with pytest.raises(JobFailed, match="NoSuchBucket"):
        client.wait(wrong_bucket, timeout_s=600)
    answers.append(client.status(wrong_bucket))

    logs = "".join(p.read_text() for p in (tmp_path / "worker-logs").glob("*.log"))
    assert "job" in logs and "done in" in logs, "the worker logs were not captured"
    answered = json.dumps(answers)
    never_anywhere = {
        "bucket secret key": bucket_env["BUCKET_SECRET_ACCESS_KEY"],
        "job s3Config secret": JOB_S3_SECRET,
        "image URL signature": IMAGE_SECRET,
        "API key": KEY,
    }
    for what, secret in never_anywhere.items():
        assert secret not in logs, f"the {what} is in a worker log"
        assert secret not in answered, f"the {what} is in a job's output or error"
    assert video_signature not in logs, "the video's presigned query string is in a worker log"
    assert endpoint.token not in logs, "the worker's job-take token is in a worker log"
