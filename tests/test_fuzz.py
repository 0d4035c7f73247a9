"""Arbitrary JSON thrown at the worker's handler (hypothesis): every job ends as a video or a clear
error; no exception escapes, no internal error, and the worker serves a good job afterwards.

Two hypothesis profiles: the default tier runs a few dozen examples of each (most arbitrary inputs
fail validation in milliseconds; about half of the hostile edits are valid jobs of 8 s each), the
load tier the full 400 and 25 (`pytest -m load`; 400 and 12 at `--load-scale=ci`)."""

import os
import tempfile

import pytest
from helpers import SHAPE, UNGUIDED, data_uri, encode, picture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wan_i2v.schema import JobInput
from wan_i2v.worker import netguard
from wan_i2v.worker.job import Worker
from wan_i2v.worker.netguard import UrlPolicy
from wan_i2v.worker.settings import Settings

GOOD = {"image": data_uri(encode(picture(64, 48), "PNG")), "prompt": "a boat", **SHAPE, **UNGUIDED}
FIELDS = sorted(JobInput.model_fields)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# Strings the image fields understand, some of them hostile.
image_like = st.sampled_from(
    [
        "",
        "data:image/png;base64,",
        "data:text/html;base64,PGh0bWw+",
        "http://intranet.example/a.png",
        "https://169.254.169.254/latest/meta-data/",
        "http://[::1]:80/x",
        "ftp://example.com/a.png",
        "iVBORw0KGgo=",
        "////",
        GOOD["image"][:200],
    ]
)
# A good job with a few fields replaced, added or removed: most are invalid, some are valid.
mutated_inputs = st.builds(
    lambda changes, removed: {**{k: v for k, v in GOOD.items() if k not in removed}, **changes},
    st.dictionaries(st.sampled_from(FIELDS + ["extra", "Prompt"]), json_values | image_like, max_size=3),
    st.sets(st.sampled_from(sorted(GOOD)), max_size=2),
)


def jobs(inputs):
    return st.fixed_dictionaries(
        {"id": st.text(max_size=20) | st.integers(), "input": inputs}, optional={"s3Config": json_values}
    )


@pytest.fixture(scope="module")
def fuzz_worker(engine, tmp_path_factory):
    def nowhere(host, port):
        return ["10.255.0.1"]  # every name resolves to a private address: nothing leaves this machine

    out = tmp_path_factory.mktemp("fuzz")
    return Worker(engine, Settings(model="tiny", output_dir=out, url_policy=UrlPolicy().with_resolver(nowhere)))


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch):
    def refuse(address, *args, **kwargs):
        raise AssertionError(f"the fuzzed job opened a connection to {address}")

    monkeypatch.setattr(netguard.urllib3_connection, "create_connection", refuse)


def check(worker, job, tmp_root):
    tmp = tmp_root / "fuzz-tmp"
    tmp.mkdir(exist_ok=True)
    tempfile.tempdir = str(tmp)
    try:
        result = worker.handle(job)
    finally:
        tempfile.tempdir = None
    assert isinstance(result, dict)
    if "error" in result:
        assert set(result) <= {"error", "refresh_worker"}, result
        assert isinstance(result["error"], str) and result["error"], result
        assert not result["error"].startswith("internal error"), (job, result)
        assert result.get("refresh_worker") is not True, (job, result)  # bad input never costs a worker
        given_keys = [str(k) for k in job["input"]] if isinstance(job["input"], dict) else []
        named = FIELDS + given_keys + ["input", "job", "s3Config"]
        assert any(result["error"].startswith(name) for name in named), result  # names the field
    else:
        wanted = "data:video/mp4;base64," if job["input"].get("return_base64") is True else "file://"
        assert result["video_url"].startswith(wanted), result["video_url"][:80]
        assert result["frame_num"] == job["input"].get("frame_num", 81)
    assert list(tmp.iterdir()) == [], "temporary files were left behind"


# (any JSON examples, hostile-edit examples) per tier.
settings.register_profile("default-tier", max_examples=40)
settings.register_profile("load-tier", max_examples=400)
# At the CI load scale (`--load-scale=ci`, .ci/run) the load tier's hostile edits are 12 (each valid one is a job).
EDIT_EXAMPLES = {"default-tier": 4, "load-tier": 12 if os.environ.get("WAN_TEST_LOAD_SCALE") == "ci" else 25}


def fuzz(profile: str, examples: int | None = None):
    return settings(
        settings.get_profile(profile),
        **({"max_examples": examples} if examples else {}),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def any_json(fuzz_worker, job, tmp_path_factory):
    check(fuzz_worker, job, tmp_path_factory.getbasetemp())


def hostile_edit(fuzz_worker, job, tmp_path_factory):
    check(fuzz_worker, job, tmp_path_factory.getbasetemp())


test_any_json_input_ends_as_a_clear_error = fuzz("default-tier")(given(job=jobs(json_values))(any_json))
test_a_good_job_with_hostile_changes_ends_as_a_video_or_a_clear_error = fuzz(
    "default-tier", EDIT_EXAMPLES["default-tier"]
)(given(job=jobs(mutated_inputs))(hostile_edit))
test_400_arbitrary_inputs_end_as_clear_errors = pytest.mark.load(
    fuzz("load-tier")(given(job=jobs(json_values))(any_json))
)
test_25_hostile_edits_of_a_good_job_end_as_a_video_or_a_clear_error = pytest.mark.load(
    fuzz("load-tier", EDIT_EXAMPLES["load-tier"])(given(job=jobs(mutated_inputs))(hostile_edit))
)


def test_the_worker_still_serves_a_good_job_after_fuzzing(fuzz_worker):
    result = fuzz_worker.handle({"id": "after-fuzz", "input": GOOD})
    assert "video_url" in result, result


@pytest.mark.load
def test_the_worker_still_serves_a_good_job_after_the_long_fuzzing(fuzz_worker):
    result = fuzz_worker.handle({"id": "after-long-fuzz", "input": GOOD})
    assert "video_url" in result, result
