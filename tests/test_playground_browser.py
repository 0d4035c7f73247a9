"""The playground in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`) driven
through Selenium, against the dev endpoint running a real `handler.py` worker on the tiny model.

One browser, one playground and one warm worker for the module; the tests run in order (a job, then the
history after a reload, then errors, then a cancel) and each saves a screenshot (WAN_SCREENSHOT_DIR,
default a temporary folder; the README's pictures are two of them). Every response the browser
received is read back through the DevTools protocol at the end: the endpoint's API key is in none.

Marked `browser` (`pytest -m browser`; .ci/run runs them after the default tier). Without Chromium they
skip on a developer machine and fail under CI (CI set).
"""

import base64
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from helpers import ROOT, encode, picture

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

CHROMIUM = os.environ.get("WAN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("WAN_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
KEY = "rp-secret-key-for-the-browser-test-0123456789"
PROMPT = "a red boat drifting on a calm lake"
FRAMES, FPS, STEPS = 17, 16, 15


def _need_browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if not missing:
        return
    message = f"no browser for the playground tests ({', '.join(missing)}): apt install chromium chromium-driver"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI: the browser tests must run)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def stack(tiny_model, tmp_path_factory):
    """The dev endpoint (one worker, kept warm), the playground over it, and headless Chromium."""
    _need_browser()
    folder = tmp_path_factory.mktemp("playground")
    shots = Path(os.environ.get("WAN_SCREENSHOT_DIR") or folder / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    # The workers start later, on demand, from this environment: it must hold for the whole module.
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith(("BUCKET_", "RUNPOD_"))]:
            env.delenv(name)
        env.setenv("WAN_MODEL", str(tiny_model))
        env.setenv("WAN_OUTPUT_DIR", str(folder / "worker-out"))
        yield from _stack(folder, shots)


def _stack(folder: Path, shots: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from wan_i2v.ops.api import ApiSession
    from wan_i2v.ops.client import Client
    from wan_i2v.ops.devserver import DevEndpoint
    from wan_i2v.ops.playground import History, Playground, PlaygroundServer

    endpoint = DevEndpoint(
        api_key=KEY, handler=ROOT / "handler.py", idle_timeout_s=600, log_dir=folder / "worker-logs"
    ).start()
    client = Client(endpoint_id="dev", api=ApiSession(KEY), base_url=endpoint.url + "/v2", poll_s=0.3)
    history = History(folder / "data")
    server = PlaygroundServer(Playground(client, history, "dev endpoint (tiny model)"), port=0).start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,1000", "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={folder / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.execute_cdp_cmd("Network.enable", {})
    state = {"endpoint": endpoint, "server": server, "driver": driver, "shots": shots, "folder": folder, "audited": 0}
    state["history"] = history
    try:
        yield state
    finally:
        driver.quit()
        server.close()
        history.close()
        endpoint.close()


def shot(stack, name: str, whole_page: bool = False) -> Path:
    """The window as the browser shows it, or the whole page (the README's pictures)."""
    path = stack["shots"] / f"{name}.png"
    driver = stack["driver"]
    if whole_page:  # from the top, where the job's panel sticks
        driver.execute_script("window.scrollTo(0, 0)")
        picture = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(picture["data"]))
    else:
        driver.save_screenshot(str(path))
    return path


def wait(predicate, timeout_s: float, what: str, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def by_id(driver, name: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, name)


def text_of(driver, name: str) -> str:
    return driver.execute_script("const e = document.getElementById(arguments[0]); return e ? e.textContent : ''", name)


def open_page(stack):
    driver = stack["driver"]
    audit(stack)
    driver.get(stack["server"].url)
    wait(lambda: driver.execute_script("return !!document.getElementById('field-frame_num')"), 20, "the form")


def fill(driver, name: str, value) -> None:
    field = by_id(driver, f"field-{name}")
    field.clear()
    field.send_keys(str(value))


def upload(stack, width=208, height=120) -> Path:
    path = stack["folder"] / f"input-{width}x{height}.png"
    path.write_bytes(encode(picture(width, height)))
    by_id(stack["driver"], "image-file").send_keys(str(path))
    wait(lambda: "832" in text_of(stack["driver"], "output-size"), 10, "the preview's output size")
    return path


def submissions(stack) -> int:
    return len(stack["endpoint"].stats().submissions)


def test_a_job_shows_its_progress_then_plays_its_video(stack):
    driver = stack["driver"]
    open_page(stack)
    upload(stack)
    assert "832×480" in text_of(driver, "output-size").replace("x", "×")
    fill(driver, "prompt", PROMPT)
    fill(driver, "frame_num", FRAMES)
    fill(driver, "fps", FPS)
    fill(driver, "sample_steps", STEPS)
    fill(driver, "seed", 42)
    before = submissions(stack)
    by_id(driver, "submit").click()
    seen: list[tuple[float, str]] = []
    running_shot = None

    def finished():
        value = driver.execute_script(
            "const p = document.getElementById('progress'); return p ? p.getAttribute('aria-valuenow') : null"
        )
        text = text_of(driver, "progress-text")
        if value not in (None, ""):
            seen.append((float(value), text))
        nonlocal running_shot
        if running_shot is None and "denoise" in text and 45 < float(value or 0) < 80:
            running_shot = shot(stack, "playground-running", whole_page=True)
        return text_of(driver, "status").strip() in ("COMPLETED", "FAILED")

    wait(finished, 300, "the job to end", every_s=0.1)
    assert text_of(driver, "status").strip() == "COMPLETED", text_of(driver, "job-error")
    assert submissions(stack) == before + 1
    percents = [p for p, _ in seen]
    assert percents == sorted(percents), "the bar never goes back"
    denoising = sorted({p for p, text in seen if "denoise" in text})
    assert len(denoising) >= 3, f"the bar moved through the denoising steps: {seen}"
    assert any(f"/{STEPS}" in text for _, text in seen), "step n of N shown"
    wait(
        lambda: (
            float(driver.execute_script("return document.getElementById('progress').getAttribute('aria-valuenow')"))
            == 100
        ),
        10,
        "100%",
    )
    ready = wait(
        lambda: driver.execute_script(
            "const v = document.getElementById('result-video');"
            "return v && v.readyState >= 2 ? [v.readyState, v.duration] : null"
        ),
        30,
        "the video to load",
    )
    assert abs(ready[1] - FRAMES / FPS) <= 0.1 * FRAMES / FPS, ready
    assert "42" in text_of(driver, "metadata")
    chart = text_of(driver, "timings-chart")
    assert "denoise" in chart and "vae decode" in chart and "lora load" not in chart, chart
    assert running_shot is not None, "a screenshot while denoising"
    wait(
        lambda: driver.execute_script("return document.querySelectorAll('.history-item img').length") >= 1,
        20,
        "the poster",
    )
    shot(stack, "playground-finished", whole_page=True)


def test_after_a_reload_the_job_is_in_the_history_and_plays(stack):
    from selenium.webdriver.common.by import By

    driver = stack["driver"]
    open_page(stack)
    items = wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".history-item"), 10, "the history")
    job_id = items[0].get_attribute("data-job-id")
    assert job_id and "COMPLETED" in items[0].text
    items[0].click()
    ready = wait(
        lambda: driver.execute_script(
            "const v = document.getElementById('result-video'); return v && v.readyState >= 2 ? v.currentSrc : null"
        ),
        20,
        "the history's video",
    )
    assert job_id in ready
    shot(stack, "playground-history")


def test_field_errors_show_next_to_their_field_from_the_page_and_from_the_worker(stack):
    driver = stack["driver"]
    open_page(stack)
    upload(stack)
    fill(driver, "frame_num", 83)
    before = submissions(stack)
    by_id(driver, "submit").click()
    wait(lambda: "4n+1" in text_of(driver, "error-frame_num"), 5, "the frame count's error")
    assert "85" in text_of(driver, "error-frame_num") and submissions(stack) == before  # not sent
    shot(stack, "playground-field-error")
    # The worker's own refusal, mapped to its field: an image URL on a loopback address.
    fill(driver, "frame_num", FRAMES)
    by_id(driver, "image-url").clear()
    by_id(driver, "image-url").send_keys("http://127.0.0.1:9/picture.png")
    by_id(driver, "image-url-use").click()
    by_id(driver, "submit").click()
    wait(lambda: "refused" in text_of(driver, "error-image"), 120, "the worker's error next to the image")
    assert text_of(driver, "status").strip() == "FAILED" and submissions(stack) == before + 1
    shot(stack, "playground-worker-error")


def test_cancel_on_a_queued_job_shows_it_cancelled(stack):
    driver = stack["driver"]
    open_page(stack)
    upload(stack)
    fill(driver, "frame_num", FRAMES)
    fill(driver, "sample_steps", 30)  # long enough to keep the only worker busy
    by_id(driver, "submit").click()
    wait(lambda: text_of(driver, "status").strip() == "IN_PROGRESS", 60, "the first job to start")
    by_id(driver, "submit").click()  # the same settings again: it waits for the busy worker
    wait(lambda: text_of(driver, "status").strip() == "IN_QUEUE", 10, "the second job queued")
    assert "waiting" in text_of(driver, "progress-text").lower()
    by_id(driver, "cancel").click()
    wait(lambda: text_of(driver, "status").strip() == "CANCELLED", 20, "the cancel")
    shot(stack, "playground-cancelled")


def test_two_finished_jobs_compare_side_by_side_and_a_jobs_settings_come_back(stack):
    """The 30-step job of the cancel test was still running at the reload: the page follows it to the end."""
    from selenium.webdriver.common.by import By

    driver = stack["driver"]
    open_page(stack)

    def finished_ids():
        cards = driver.find_elements(By.CSS_SELECTOR, ".history-item")
        done = [
            c.get_attribute("data-job-id")
            for c in cards
            if "COMPLETED" in c.text and c.find_element(By.CSS_SELECTOR, ".compare-pick").is_enabled()
        ]
        return done[:2] if len(done) >= 2 else None

    # The gallery redraws its cards as jobs change: find a card by its job each time, never keep one.
    ids = wait(lambda: _quietly(finished_ids), 180, "two finished jobs in the history")
    for job_id in ids:
        click_card(driver, job_id, "label.pick")
    by_id(driver, "compare").click()
    states = wait(
        lambda: driver.execute_script(
            "const v = [...document.querySelectorAll('#compare-columns video')];"
            "return v.length === 2 && v.every(x => x.readyState >= 2) ? v.map(x => x.currentSrc) : null"
        ),
        30,
        "both videos to play",
    )
    assert sorted(next(i for i in ids if i in src) for src in states) == sorted(ids)
    differing = driver.execute_script(
        "return [...document.querySelectorAll('#compare-columns tr.diff th')].map(th => th.textContent)"
    )
    assert differing.count("sample_steps") == 2 and differing.count("seed (used)") == 2, differing
    posters = f'.history-item[data-job-id="{ids[0]}"] img.thumb, .history-item[data-job-id="{ids[1]}"] img.thumb'
    wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, posters)) == 2, 20, "a poster for each, watched or not")
    shot(stack, "playground-compare")
    by_id(driver, "compare-close").click()
    # Open the 30-step job, put its settings back in the form, then send it again with a new seed.
    slow_id = next(i for i in ids if i != stack["endpoint"].stats().submissions[0]["id"])
    click_card(driver, slow_id)
    wait(lambda: slow_id in text_of(driver, "run-job"), 10, "the job opened")
    by_id(driver, "reuse").click()
    wait(lambda: by_id(driver, "field-sample_steps").get_attribute("value") == "30", 10, "the form refilled")
    wait(lambda: "832" in text_of(driver, "output-size"), 10, "its image back in the preview")
    before = submissions(stack)
    by_id(driver, "new-seed").click()
    wait(lambda: submissions(stack) == before + 1, 10, "the job sent again")
    sent = stack["endpoint"].stats().submissions
    again, original = sent[-1]["input"], next(s["input"] for s in sent if s["id"] == slow_id)
    assert again["seed"] != original.get("seed") and again["sample_steps"] == 30
    assert {k: v for k, v in again.items() if k != "seed"} == {k: v for k, v in original.items() if k != "seed"}
    wait(lambda: text_of(driver, "status").strip() in ("IN_QUEUE", "IN_PROGRESS"), 10, "the new job followed")
    by_id(driver, "cancel").click()
    wait(lambda: text_of(driver, "status").strip() == "CANCELLED", 20, "the cancel")


def _quietly(read):
    """`read()`, or None when the page redrew what it was reading (the wait then tries again)."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return read()
    except StaleElementReferenceException:
        return None


def click_card(driver, job_id: str, inside: str | None = None) -> None:
    """Clicks a history card (or something in it), found afresh until the click lands."""
    from selenium.webdriver.common.by import By

    selector = f'.history-item[data-job-id="{job_id}"]' + (f" {inside}" if inside else "")
    wait(lambda: _quietly(lambda: driver.find_element(By.CSS_SELECTOR, selector).click() or True), 10, selector)


_DROP_OR_PASTE = """
const [how, b64] = arguments;
const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const data = new DataTransfer();
data.items.add(new File([bytes], how + ".png", {type: "image/png"}));
const init = {bubbles: true, cancelable: true};
const zone = document.getElementById("drop-zone");
if (how === "drop") zone.dispatchEvent(new DragEvent("drop", {...init, dataTransfer: data}));
else document.body.dispatchEvent(new ClipboardEvent("paste", {...init, clipboardData: data}));
"""


def test_an_image_comes_in_by_drop_and_by_paste_too(stack):
    """The events a drop and a paste deliver, with a real PNG file in them; the preview names the size the
    worker's own rule gives for it."""
    from wan_i2v.framing import output_size

    driver = stack["driver"]
    open_page(stack)
    for how, (width, height) in (("drop", (300, 400)), ("paste", (500, 200))):
        driver.execute_script(_DROP_OR_PASTE, how, base64.b64encode(encode(picture(width, height))).decode())
        size = "{}×{}".format(*output_size(width, height, "480p"))
        wait(lambda size=size: size in text_of(driver, "output-size"), 10, f"the {how}ped image's preview ({size})")
        assert f"image {width}×{height}" in text_of(driver, "output-size")


def test_another_endpoints_job_is_shown_as_last_seen_and_never_polled(stack):
    """A history outlives the endpoint it was used with (a --dev endpoint is a new one at each launch): a
    job sent elsewhere keeps its last known state, with a note saying why, and the page neither polls it
    nor offers to cancel it through this endpoint."""
    driver, job_id = stack["driver"], "sent-elsewhere-0001"
    elsewhere = "dev endpoint at http://127.0.0.1:9 (an earlier launch)"
    history = stack["history"]
    job_input = {"image": None, "prompt": PROMPT, "frame_num": FRAMES}
    history.add(job_id, elsewhere, job_input, encode(picture(208, 120)), "image/png")
    progress = {"phase": "denoise", "step": 3, "total_steps": 15, "expert": "high_noise", "percent": 20.0}
    history.update(job_id, status="IN_PROGRESS", started_at=time.time(), progress=progress)
    open_page(stack)
    click_card(driver, job_id)
    wait(lambda: f"Sent to {elsewhere}" in text_of(driver, "job-error"), 10, "the note on the job")
    assert text_of(driver, "status").strip() == "IN_PROGRESS" and "denoise 3/15" in text_of(driver, "progress-text")
    assert not by_id(driver, "cancel").is_enabled() and text_of(driver, "elapsed") == ""
    assert text_of(driver, "run-stage-text") == "generating when last seen"
    time.sleep(3)  # six turns of the on-screen poll (500 ms)
    asked = driver.execute_script(
        "return performance.getEntriesByType('resource').filter((e) => e.name.endsWith(arguments[0])).length",
        f"/api/jobs/{job_id}",
    )
    assert asked == 0, f"the page asked about another endpoint's job {asked} times"
    shot(stack, "playground-other-endpoint")


def test_the_api_key_is_in_no_response_the_browser_received(stack):
    audit(stack)
    assert stack["audited"] >= 10  # the page, its assets, config, jobs, polls, videos, posters
    print(f"{stack['audited']} responses read back, the key in none")


def audit(stack) -> None:
    """Every response the browser received since the last audit: the API key in no header and no body.

    Called before each navigation too (a reload drops the bodies of the page before it)."""
    driver = stack["driver"]
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") != "Network.responseReceived":
            continue
        response = message["params"]["response"]
        assert KEY not in json.dumps(response.get("headers", {})), response["url"]
        try:
            body = driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": message["params"]["requestId"]})
        except Exception:  # a response without a body (204, a redirect) or one the browser dropped
            continue
        data = base64.b64decode(body["body"]) if body.get("base64Encoded") else body["body"].encode()
        assert KEY.encode() not in data, response["url"]
        stack["audited"] += 1
