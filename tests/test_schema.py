import json
import re

import pytest
from helpers import OUTPUT, ROOT

from wan_i2v.errors import InputError
from wan_i2v.schema import (
    WAN_NEGATIVE_PROMPT,
    JobInput,
    JobOutput,
    Phase,
    markdown_table,
    output_markdown_table,
    parse_job_input,
    progress_event,
)

GOOD = {"image": "https://example.com/a.png"}


def test_defaults_follow_the_contract():
    job = parse_job_input(GOOD)
    assert (job.prompt, job.resolution, job.sample_steps, job.frame_num, job.fps) == ("", "480p", 30, 81, 16)
    assert (job.guidance_scale, job.guidance_scale_2, job.shift) == (3.5, 3.5, 5.0)
    assert job.seed is None and job.last_image is None and job.return_base64 is False
    assert job.negative_prompt == WAN_NEGATIVE_PROMPT


def test_every_valid_frame_count_is_accepted():
    for frames in range(17, 162, 4):
        assert parse_job_input({**GOOD, "frame_num": frames}).frame_num == frames


def test_bounds_are_inclusive():
    job = parse_job_input({**GOOD, "sample_steps": 50, "fps": 8, "seed": 2**32 - 1, "guidance_scale": 1, "shift": 20.0})
    assert (job.sample_steps, job.fps, job.seed, job.guidance_scale, job.shift) == (50, 8, 2**32 - 1, 1.0, 20.0)


BAD = [
    ({}, "image", "required"),
    ({"image": 5}, "image", "http(s) URL"),
    ({"image": ""}, "image", "http(s) URL"),
    ({"prompt": 7}, "prompt", "string"),
    ({"prompt": "x" * 5001}, "prompt", "at most 5000"),
    ({"negative_prompt": None}, "negative_prompt", "string"),
    ({"resolution": "1080p"}, "resolution", "one of '480p', '720p'"),
    ({"resolution": 480}, "resolution", "one of '480p', '720p'"),
    ({"sample_steps": 14}, "sample_steps", "integer from 15 to 50"),
    ({"sample_steps": 51}, "sample_steps", "integer from 15 to 50"),
    ({"sample_steps": "30"}, "sample_steps", "integer from 15 to 50"),
    ({"sample_steps": 30.5}, "sample_steps", "integer from 15 to 50"),
    ({"sample_steps": True}, "sample_steps", "integer from 15 to 50"),
    ({"frame_num": 80}, "frame_num", "nearest valid: 77 or 81"),
    ({"frame_num": 82}, "frame_num", "nearest valid: 81 or 85"),
    ({"frame_num": 13}, "frame_num", "integer from 17 to 161"),
    ({"frame_num": 165}, "frame_num", "integer from 17 to 161"),
    ({"fps": 7}, "fps", "integer from 8 to 30"),
    ({"fps": 31}, "fps", "integer from 8 to 30"),
    ({"seed": -1}, "seed", "integer from 0 to 4294967295"),
    ({"seed": 2**32}, "seed", "integer from 0 to 4294967295"),
    ({"seed": "42"}, "seed", "integer from 0 to 4294967295"),
    ({"guidance_scale": 0.5}, "guidance_scale", "number from 1.0 to 10.0"),
    ({"guidance_scale": 10.5}, "guidance_scale", "number from 1.0 to 10.0"),
    ({"guidance_scale": "high"}, "guidance_scale", "number from 1.0 to 10.0"),
    ({"guidance_scale_2": 11}, "guidance_scale_2", "number from 1.0 to 10.0"),
    ({"guidance_scale_2": float("nan")}, "guidance_scale_2", "number from 1.0 to 10.0"),
    ({"shift": 0.9}, "shift", "number from 1.0 to 20.0"),
    ({"shift": 21}, "shift", "number from 1.0 to 20.0"),
    ({"last_image": 3}, "last_image", "http(s) URL"),
    ({"return_base64": "yes"}, "return_base64", "true or false"),
    ({"steps": 20}, "steps", "unknown field, allowed fields: image prompt negative_prompt"),
    ({"loras": "a.safetensors"}, "loras", "a list of at most 3 objects {high, low, scale, high_scale, low_scale}"),
    ({"loras": [{"high": "a.safetensors"}] * 4}, "loras", "at most 3 items"),
    ({"loras": [{}]}, "loras[0]", "names no file: give high, low or both"),
    ({"loras": [{"high": "a.safetensors", "scale": 2.5}]}, "loras[0].scale", "number from 0.0 to 2.0"),
    ({"loras": [{"low": "a.safetensors", "low_scale": -1}]}, "loras[0].low_scale", "number from 0.0 to 2.0"),
    ({"loras": [{"high": "a", "weight": 1}]}, "loras[0].weight", "unknown field, allowed fields: high low scale"),
    ({"loras": [{"high": "a"}, {"high": 5}]}, "loras[1].high", "a .safetensors file name in the worker's LoRA"),
]


@pytest.mark.parametrize("change, field, allowed", BAD, ids=[f"{f}={list(c.values())[:1]}" for c, f, _ in BAD])
def test_bad_input_names_the_field_and_what_is_allowed(change, field, allowed):
    raw = {**GOOD, **change} if change else {}
    with pytest.raises(InputError) as caught:
        parse_job_input(raw)
    message = str(caught.value)
    assert message.startswith(f"{field}: ") or f"; {field}: " in message
    assert allowed in message


def test_lora_entries_settle_their_per_expert_strengths():
    request = parse_job_input(
        {**GOOD, "loras": [{"high": "h.safetensors", "low": "https://x.example/l.safetensors", "low_scale": 0.5}]}
    )
    assert request.loras[0].files() == {"high": ("h.safetensors", 1.0), "low": ("https://x.example/l.safetensors", 0.5)}
    assert parse_job_input({**GOOD, "loras": [{"low": "l.safetensors", "scale": 0}]}).loras[0].files() == {
        "low": ("l.safetensors", 0.0)
    }
    assert parse_job_input(GOOD).loras == []


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(InputError) as caught:
        parse_job_input({**GOOD, "fps": 100, "seed": -5, "colour": "red"})
    fields = re.findall(r"(?:^|; )(\w+): ", str(caught.value))
    assert sorted(fields) == ["colour", "fps", "seed"]


@pytest.mark.parametrize("raw", [None, [], "image.png", 3])
def test_input_must_be_an_object(raw):
    with pytest.raises(InputError, match="^input: must be a JSON object"):
        parse_job_input(raw)


def test_long_values_are_shortened_in_messages():
    with pytest.raises(InputError) as caught:
        parse_job_input({**GOOD, "prompt": ["x" * 10_000]})
    assert len(str(caught.value)) < 300


def test_readme_input_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "README input table is stale: paste `python -m wan_i2v.schema`"


def test_schema_fields_all_have_descriptions():
    assert all(info.description for info in JobInput.model_fields.values())


def test_readme_output_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert output_markdown_table() in readme, "README output table is stale: paste `python -m wan_i2v.schema`"
    assert all(info.description for info in JobOutput.model_fields.values())


def test_readme_output_example_is_a_whole_output_the_model_reads():
    """The example answer under the output table names every field a worker without a bucket returns."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Outputs") :]
    example = json.loads(section[section.index("```json\n") + 8 : section.index("\n```", section.index("```json"))])
    assert JobOutput.model_validate(example).to_json() == example
    fields = set(JobOutput.model_fields) - {"video_url_expires_at", "interpolate_model"}  # with a bucket, interpolation
    assert set(example) == fields and set(example["timings"]) == set(OUTPUT["timings"])
    # No path of the machine it ran on: the checkout's folder is written as a placeholder.
    assert example["video_url"].startswith("file://<checkout>/outputs/") and str(ROOT) not in readme


def test_the_output_model_round_trips_and_leaves_out_what_has_no_value():
    assert JobOutput.model_validate(OUTPUT).to_json() == OUTPUT
    local = {k: v for k, v in OUTPUT.items() if k != "video_url_expires_at"} | {"storage": "local"}
    assert JobOutput.model_validate(local).to_json() == local
    newer = {**OUTPUT, "mode": "turbo", "timings": {**OUTPUT["timings"], "lora_switch": 0.5}}
    assert JobOutput.model_validate(newer).to_json() == newer  # a newer worker's fields are kept
    with pytest.raises(ValueError, match="storage"):
        JobOutput.model_validate({**OUTPUT, "storage": "ftp"})
    with pytest.raises(ValueError, match="timings.denoise"):
        JobOutput.model_validate({**OUTPUT, "timings": {"total": 1.0}})


def test_progress_percent_runs_from_0_to_100_through_the_phases():
    assert progress_event(Phase.FETCH_IMAGE) == {"phase": "fetch_image", "percent": 0}
    assert progress_event(Phase.DENOISE, step=0, total_steps=10, expert="high_noise")["percent"] == 6
    half = progress_event(Phase.DENOISE, step=5, total_steps=10, expert="high_noise")
    assert half == {"phase": "denoise", "step": 5, "total_steps": 10, "expert": "high_noise", "percent": 48.0}
    assert progress_event(Phase.DENOISE, step=10, total_steps=10, expert="low_noise")["percent"] == 90
    starts = [progress_event(phase)["percent"] for phase in Phase]
    assert starts == sorted(starts) and starts[-1] == 99
    assert progress_event(Phase.INTERPOLATE, done=3, total=4, model="rife")["percent"] == 96.5


def test_the_resolution_of_a_job_naming_none_is_the_workers():
    assert parse_job_input(GOOD).resolution == "480p"
    assert parse_job_input(GOOD, "quality", "720p").resolution == "720p"
    assert parse_job_input({**GOOD, "resolution": "480p"}, "turbo", "720p").resolution == "480p"  # the job's own wins
    with pytest.raises(InputError, match=r"resolution: '1080p' is not allowed .*allowed: one of '480p', '720p'"):
        parse_job_input({**GOOD, "resolution": "1080p"}, "quality", "720p")
