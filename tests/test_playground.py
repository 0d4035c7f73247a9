"""The playground's backend without a browser: its guards (Host, token, body cap, remote binding), the
config it serves from the one schema, the crop preview by the worker's own rule, field errors, and jobs
sent to a real local endpoint that never starts a worker (they stay queued; cancel ends them), kept in
a history that outlives the server. What the page does with it is tested in a real browser in
test_playground_browser.py."""

import ast
import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from helpers import KEY, OUTPUT, b64, client_for, data_uri, encode, picture, wan_i2v

from wan_i2v.framing import MAX_IMAGE_BYTES, crop_in_source, output_size
from wan_i2v.ops.api import ApiError
from wan_i2v.ops.playground import History, Playground, PlaygroundServer, create_app
from wan_i2v.ops.playground import backend as playground_backend
from wan_i2v.ops.playground.app import host_names
from wan_i2v.ops.playground.backend import PlaygroundError, field_errors
from wan_i2v.schema import JobInput

pytest.importorskip("flask")

IMAGE = data_uri(encode(picture(208, 120)))


@pytest.fixture
def served(idle_endpoint, tmp_path):
    """The playground on a free loopback port, over a real local endpoint whose jobs stay queued."""
    playground = Playground(client_for(idle_endpoint), History(tmp_path / "data"), "dev endpoint (test)")
    server = PlaygroundServer(playground, port=0).start()
    yield server, playground, idle_endpoint
    server.close()
    playground.history.close()


def call(server, method, path, body=None, token=True, **kwargs):
    headers = kwargs.pop("headers", {})
    if token:
        headers["X-Playground-Token"] = server.token
    return requests.request(method, server.url.rstrip("/") + path, json=body, headers=headers, timeout=10, **kwargs)


def test_the_page_and_config_come_from_the_package_and_the_one_schema(served):
    server, _, _ = served
    page = call(server, "GET", "/", token=False)
    assert page.status_code == 200 and f'content="{server.token}"' in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    for asset in assets:  # the list grows with the ES modules the page's scripts import
        answer = call(server, "GET", asset, token=False)
        assert answer.status_code == 200, asset
        if asset.endswith(".js"):
            assert answer.headers["Content-Type"].startswith("text/javascript"), asset
            imported = re.findall(r'^import .* from "\./([\w-]+\.js)";$', answer.text, re.M)
            assets += [f"/static/{name}" for name in imported if f"/static/{name}" not in assets]
    config = call(server, "GET", "/api/config", token=False).json()
    assert config["schema"] == json.loads(json.dumps(JobInput.model_json_schema()))
    assert config["modes"]["turbo"]["steps"] == [2, 8] and config["limits"]["image_bytes"] == MAX_IMAGE_BYTES
    assert "mode" in config["schema"]["properties"] and "loras" in config["schema"]["properties"]


def test_the_preview_is_the_workers_size_and_crop(served):
    server, _, _ = served
    for width, height, resolution in ((1920, 1080, "480p"), (600, 800, "720p"), (333, 333, "480p")):
        answer = call(server, "POST", "/api/preview", {"width": width, "height": height, "resolution": resolution})
        size = output_size(width, height, resolution)
        assert answer.json() == {"width": size[0], "height": size[1], "crop": crop_in_source(width, height, size)}
    refused = call(server, "POST", "/api/preview", {"width": 4000, "height": 500, "resolution": "480p"})
    assert refused.status_code == 422 and "aspect ratio" in refused.json()["errors"]["image"]


def test_changes_need_the_launch_token_and_the_host_must_be_the_playgrounds(served):
    server, _, endpoint = served
    job = {"input": {"image": IMAGE, "prompt": "a boat"}}
    for headers in ({}, {"X-Playground-Token": "wrong"}):
        answer = call(server, "POST", "/api/jobs", job, token=False, headers=headers)
        assert answer.status_code == 403 and "token" in answer.json()["message"]
    rebound = call(server, "GET", "/api/config", token=False, headers={"Host": f"evil.example:{server.port}"})
    assert rebound.status_code == 403  # a DNS-rebinding page names its own host
    assert endpoint.stats().submissions == []  # nothing reached the endpoint


def test_bad_fields_are_named_with_the_workers_words_and_big_uploads_are_refused(served):
    server, _, endpoint = served
    answer = call(server, "POST", "/api/jobs", {"input": {"image": IMAGE, "frame_num": 83, "fps": 100}})
    errors = answer.json()["errors"]
    assert answer.status_code == 422 and set(errors) == {"frame_num", "fps"}
    assert errors["frame_num"].startswith("frame_num: 83 is not allowed (must be 4n+1; nearest valid: 81 or 85)")
    turbo = call(server, "POST", "/api/jobs", {"input": {"image": IMAGE, "mode": "turbo", "sample_steps": 30}})
    assert "sample_steps: 30 is not allowed in turbo mode" in turbo.json()["errors"]["sample_steps"]
    lora = call(
        server, "POST", "/api/jobs", {"input": {"image": IMAGE, "loras": [{"high": "a.safetensors", "scale": 3}]}}
    )
    assert "loras[0].scale" in lora.json()["errors"]
    big = "data:image/png;base64," + "A" * (MAX_IMAGE_BYTES * 4 // 3 + 400)
    too_big = call(server, "POST", "/api/jobs", {"input": {"image": big}})
    assert too_big.status_code == 413 and "at most 10 MB" in too_big.json()["errors"]["image"]
    huge = call(server, "POST", "/api/jobs", {"input": {"image": big + big + big}})
    assert huge.status_code == 413 and "image" in huge.json()["errors"]
    assert endpoint.stats().submissions == []


def test_field_errors_split_a_workers_message_by_field():
    message = "frame_num: 83 is not allowed (x; y), allowed: 17; loras[1].scale: 5 is too big; image: refused"
    assert field_errors(message) == {
        "frame_num": "frame_num: 83 is not allowed (x; y), allowed: 17",
        "loras[1].scale": "loras[1].scale: 5 is too big",
        "image": "image: refused",
    }
    assert field_errors("the GPU ran out of memory") == {}


def test_a_queued_job_is_followed_cancelled_and_kept_and_the_key_never_reaches_the_page(served, tmp_path):
    server, playground, endpoint = served
    job = {"image": IMAGE, "prompt": "a boat", "seed": 7, "return_base64": False}
    sent = call(server, "POST", "/api/jobs", {"input": job})
    assert sent.status_code == 200
    job_id = sent.json()["id"]
    assert endpoint.stats().submissions[0]["input"]["image"] == IMAGE  # the exact job reached the endpoint
    seen = call(server, "GET", f"/api/jobs/{job_id}", token=False).json()
    assert seen["status"] == "IN_QUEUE" and seen["queue"]["in_queue"] == 1 and seen["queue"]["workers_ready"] == 0
    assert seen["input"]["image"] == f"/api/jobs/{job_id}/image" and seen["input"]["seed"] == 7
    image = call(server, "GET", seen["input"]["image"], token=False)
    assert image.content == encode(picture(208, 120)) and image.headers["Content-Type"] == "image/png"
    snippets = call(server, "GET", f"/api/jobs/{job_id}/snippets", token=False).json()
    assert "$RUNPOD_API_KEY" in snippets["curl"] and "os.environ['RUNPOD_API_KEY']" in snippets["python"]
    # Each snippet carries the exact job: curl's body as JSON, Python's `job = ...` as a Python literal.
    body = snippets["curl"].split("<<'JOB'\n", 1)[1].rsplit("\nJOB", 1)[0]
    assert json.loads(body) == {"input": job}
    assignment = next(n for n in ast.parse(snippets["python"]).body if isinstance(n, ast.Assign))
    assert assignment.targets[0].id == "job" and ast.literal_eval(assignment.value) == job
    cancelled = call(server, "POST", f"/api/jobs/{job_id}/cancel")
    assert cancelled.json()["status"] == "CANCELLED"
    assert call(server, "GET", f"/api/jobs/{job_id}", token=False).json()["status"] == "CANCELLED"
    bodies = [
        call(server, "GET", path, token=False).text
        for path in ("/", "/api/config", "/api/history", f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/snippets")
    ]
    assert not any(KEY in body for body in bodies)
    server.close()
    playground.history.close()
    again = History(tmp_path / "data")  # a restart: the history is still there
    assert [(job["id"], job["status"]) for job in again.all()] == [(job_id, "CANCELLED")]
    again.close()


def test_a_job_the_endpoint_forgot_ends_failed_with_why_and_another_endpoints_job_is_left_alone(
    endpoint_factory, tmp_path
):
    """RunPod forgets a job 30 minutes after it ends (404 from /status): a job the playground stopped
    watching before then ends FAILED, saying so, instead of being asked about for ever. A history holds
    the jobs of every endpoint it was used with: the others' are shown as last seen, never asked of or
    cancelled through this one."""
    forgetful, other = endpoint_factory(spawn_workers=False, retention_s=0.2), endpoint_factory(spawn_workers=False)
    history = History(tmp_path / "data")
    here = Playground(client_for(forgetful), history, "endpoint forgetful")
    there = Playground(client_for(other), history, "endpoint other")
    gone = here.submit({"input": {"image": IMAGE, "prompt": "a boat"}})["id"]
    kept = there.submit({"input": {"image": IMAGE, "prompt": "a cat"}})["id"]
    here.job(gone)  # asked once: queued
    client_for(forgetful).cancel(gone)  # ended behind the playground's back, then forgotten
    deadline = time.monotonic() + 10
    while True:
        try:
            client_for(forgetful).status(gone)
        except ApiError as exc:
            assert exc.status == 404
            break
        assert time.monotonic() < deadline, "the endpoint kept the job past its retention"
        time.sleep(0.1)
    time.sleep(playground_backend.STATUS_EVERY_S)
    young = here.job(gone)  # a 404 for a job sent minutes ago is not RunPod's retention: asked again later
    assert young["status"] == "IN_QUEUE" and young["error"] is None
    here.forget_after_s = 0.0  # as if the job had been sent more than 30 minutes ago
    time.sleep(playground_backend.STATUS_EVERY_S)
    seen = here.job(gone)
    assert seen["status"] == "FAILED" and seen["followed"] is True
    assert "no longer knows job" in seen["error"]["message"] and "last seen in queue" in seen["error"]["message"]
    assert history.get(gone)["status"] == "FAILED"  # kept: not asked again
    foreign = here.job(kept)
    assert foreign["status"] == "IN_QUEUE" and foreign["followed"] is False and foreign["endpoint"] == "endpoint other"
    with pytest.raises(PlaygroundError) as refused:
        here.cancel(kept)
    assert refused.value.status == 409 and "endpoint other" in refused.value.message
    assert client_for(other).status(kept)["status"] == "IN_QUEUE"  # untouched where it was sent
    assert there.job(kept)["followed"] is True
    history.close()


class StandIn:
    """A worker the endpoint's pool did not start, speaking RunPod's job-take protocol over HTTP: it takes
    the next job and ends it with whatever the test says the worker answered."""

    def __init__(self, endpoint):
        with endpoint.cond:
            endpoint.queue.add_worker("stand-in")
        self.base, self.token = endpoint.url, endpoint.token

    def take(self) -> str:
        return requests.get(f"{self.base}/dev/job-take/stand-in?token={self.token}", timeout=10).json()["id"]

    def finish(self, job_id: str, output: dict) -> None:
        url = f"{self.base}/dev/job-done/stand-in/{job_id}?token={self.token}"
        assert requests.post(url, json={"output": output}, timeout=10).status_code == 200


VIDEO = b"\x00\x00\x00\x18ftypmp42 the video's bytes"  # what the bucket stand-in serves


def test_a_cancel_that_comes_after_the_job_ended_collects_its_video(served, tmp_path):
    """The job finished between two polls and Cancel was pressed: the history gets the output and the
    video, as a poll would have collected them, not a bare COMPLETED with nothing to play."""
    server, _, endpoint = served
    worker = StandIn(endpoint)
    job_id = call(server, "POST", "/api/jobs", {"input": {"image": IMAGE, "prompt": "a boat"}}).json()["id"]
    assert worker.take() == job_id
    video = tmp_path / "worker-out" / "clip.mp4"
    video.parent.mkdir()
    video.write_bytes(VIDEO)
    worker.finish(job_id, {**OUTPUT, "video_url": video.as_uri(), "seed": 99, "storage": "local"})
    assert call(server, "POST", f"/api/jobs/{job_id}/cancel").json() == {"status": "COMPLETED"}
    seen = call(server, "GET", f"/api/jobs/{job_id}", token=False).json()
    assert seen["status"] == "COMPLETED" and seen["output"]["seed"] == 99 and seen["error"] is None
    assert call(server, "GET", seen["video"], token=False).content == VIDEO


def test_pages_asking_at_once_cause_one_status_call_and_one_download_a_failed_one_is_tried_again(
    served, http_server, monkeypatch
):
    """Two tabs, or a reload during a download: one job is refreshed by one request at a time. A video the
    bucket refused is fetched again when the job is next opened, and no answer ever holds its URL."""
    server, playground, endpoint = served
    worker = StandIn(endpoint)
    job_id = call(server, "POST", "/api/jobs", {"input": {"image": IMAGE}}).json()["id"]
    asked = []
    status = playground.client.status
    monkeypatch.setattr(playground.client, "status", lambda job: asked.append(job) or status(job))
    monkeypatch.setattr(playground_backend, "STATUS_EVERY_S", 60.0)  # no two asks of a queued job in a test

    def many_at_once(path):
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _: call(server, "GET", path, token=False), range(8)))

    queued = many_at_once(f"/api/jobs/{job_id}")
    assert len(asked) == 1 and {a.json()["status"] for a in queued} == {"IN_QUEUE"}
    monkeypatch.setattr(playground_backend, "STATUS_EVERY_S", 0.0)
    worker.take()
    path = "/wan-i2v/clip.mp4"
    secret = f"{http_server.url}{path}?X-Amz-Credential=AKIA-the-credential&X-Amz-Signature=the-signature"
    worker.finish(job_id, {**OUTPUT, "video_url": secret})
    http_server.routes[path] = http_server.Route(status=503)  # the client's own download does not retry
    answers = many_at_once(f"/api/jobs/{job_id}")
    assert len(http_server.hits) == 1, f"{len(http_server.hits)} downloads of one video at once"
    assert {a.json()["status"] for a in answers} == {"COMPLETED"}
    failed = answers[0].json()
    assert failed["video"] is None and "HTTP 503 from the bucket" in failed["error"]["message"]
    every_body = [a.text for a in answers] + [call(server, "GET", "/api/history", token=False).text]
    assert not any("the-signature" in body or "AKIA" in body for body in every_body)
    http_server.routes[path] = http_server.Route(body=VIDEO)  # the bucket answers again
    monkeypatch.setattr(playground_backend, "REFETCH_EVERY_S", 0.0)
    again = call(server, "GET", f"/api/jobs/{job_id}", token=False).json()
    assert again["error"] is None and call(server, "GET", again["video"], token=False).content == VIDEO
    assert len(http_server.hits) == 2
    call(server, "GET", f"/api/jobs/{job_id}", token=False)
    assert len(http_server.hits) == 2  # fetched: not asked for again


def test_an_image_is_a_url_a_data_uri_or_base64_and_never_a_path_on_the_playgrounds_machine(served, tmp_path):
    server, _, endpoint = served
    private = tmp_path / "private.png"
    private.write_bytes(encode(picture(64, 48)))
    for value in (str(private), "file://" + str(private), "../private.png", "ftp://example.com/a.png"):
        refused = call(server, "POST", "/api/jobs", {"input": {"image": value}})
        assert refused.status_code == 422 and "never reads a path" in refused.json()["errors"]["image"], value
    assert endpoint.stats().submissions == []
    raw = b64(encode(picture(208, 120)))  # the worker takes plain base64 too
    job_id = call(server, "POST", "/api/jobs", {"input": {"image": raw}}).json()["id"]
    assert endpoint.stats().submissions[0]["input"]["image"] == raw  # sent exactly as given
    image = call(server, "GET", f"/api/jobs/{job_id}/image", token=False)
    assert image.content == encode(picture(208, 120)) and image.headers["Content-Type"] == "image/png"
    assert raw not in call(server, "GET", "/api/history", token=False).text  # kept beside the row
    too_big = call(server, "POST", "/api/jobs", {"input": {"image": "A" * (MAX_IMAGE_BYTES * 4 // 3 + 400)}})
    assert too_big.status_code == 413 and "at most 10 MB" in too_big.json()["errors"]["image"]
    svg = data_uri(b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "image/svg+xml")
    svg_id = call(server, "POST", "/api/jobs", {"input": {"image": svg}}).json()["id"]  # the worker refuses it
    served_back = call(server, "GET", f"/api/jobs/{svg_id}/image", token=False)
    assert served_back.headers["Content-Type"] == "application/octet-stream"  # never rendered as SVG here


def test_job_ids_that_cannot_name_a_folder_are_not_found(served):
    server, _, _ = served
    for path in ("/api/jobs/a%5Cb/video", "/api/jobs/%2E%2E/poster", "/api/jobs/%2E/image"):
        assert call(server, "GET", path, token=False).status_code == 404, path


def test_posters_must_be_small_pngs(served):
    server, _, _ = served
    job_id = call(server, "POST", "/api/jobs", {"input": {"image": IMAGE}}).json()["id"]
    png = encode(picture(32, 18))
    path = f"/api/jobs/{job_id}/poster"
    assert call(server, "PUT", path, data=b"GIF89a....", headers={"Content-Type": "image/png"}).status_code == 422
    assert call(server, "PUT", path, data=png, headers={"Content-Type": "image/png"}).status_code == 204
    assert call(server, "GET", path, token=False).content == png
    assert call(server, "GET", "/api/history", token=False).json()["jobs"][0]["poster"] == path


def test_bound_to_another_address_every_request_needs_the_token(tmp_path):
    playground = Playground(client=None, history=History(tmp_path / "data"), label="x")  # no job is sent here
    app = create_app(playground, "launch-token", "0.0.0.0", 7860).test_client()
    assert app.get("/").status_code == 401 and app.get("/api/config").status_code == 401
    assert app.get("/?token=wrong").status_code == 401
    page = app.get("/?token=launch-token")
    assert (
        page.status_code == 200
        and "HttpOnly" in page.headers["Set-Cookie"]
        and "SameSite=Strict" in page.headers["Set-Cookie"]
    )
    assert app.get("/api/config").status_code == 200  # the cookie the page got
    assert "wan_playground_7860=" in page.headers["Set-Cookie"]  # per port: another playground keeps its own
    assert (
        app.post("/api/preview", json={"width": 10, "height": 10}).status_code == 403
    )  # changes still need the header
    playground.history.close()


def test_a_loopback_playground_answers_to_its_own_address_and_port():
    assert "127.0.0.2:7860" in host_names("127.0.0.2", 7860) and "[::1]:7861" in host_names("::1", 7861)
    assert "127.0.0.1" in host_names("127.0.0.1", 80) and "127.0.0.1" not in host_names("127.0.0.1", 7860)
    assert not any("evil" in name for name in host_names("localhost", 7860))


def test_the_command_binds_loopback_unless_told_otherwise():
    refused = subprocess.run(
        [*wan_i2v("playground", "--host", "0.0.0.0", "--endpoint", "x", "--api-key", "k")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--allow-remote" in refused.stderr
