"""Frame interpolation: RIFE's published layout loads strictly, the stage keeps the generated frames at every
k-th position and never blends across a scene cut, and whole jobs on the tiny model give (n-1)*k+1 frames at
fps*k. The stage's properties run at a small size through `Interpolator.run`; the whole jobs use ffmpeg's
filter (0.1 s a frame on a CPU; RIFE's full-width network costs about 1-2 s a frame at 832x480 on a CPU, so
its whole job runs in the load tier)."""

import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, b64, encode, local_file, picture

from wan_i2v.errors import InputError, SettingsError
from wan_i2v.schema import Phase, parse_job_input
from wan_i2v.worker.coldstart import ColdStart
from wan_i2v.worker.interpolation.pairs import Pair, sort_pairs
from wan_i2v.worker.interpolation.rife import IFNet, RifeWeightsError, load_rife
from wan_i2v.worker.interpolation.stage import Interpolator, find_weights
from wan_i2v.worker.job import Worker
from wan_i2v.worker.levers import Ladder
from wan_i2v.worker.settings import InterpolationOptions, Settings
from wan_i2v.worker.video import probe_mp4, read_frames

sys.path.insert(0, str(ROOT / "bench"))
from motion import synthetic_clip

CPU = torch.device("cpu")


# ---- the published layout ---------------------------------------------------------------------------------
def published_layout() -> dict[str, tuple[int, ...]]:
    """RIFE v4.26's keys and shapes, written out from the module tree of the published `IFNet_HDv3.py`
    (hzwer/RIFE, RIFEv4.26_0921.zip): five IFBlocks (in_planes 7+8 for block0, 8+4+8+8 after; c = 192, 128,
    96, 64, 32), each conv0 = two conv(3x3, stride 2)+LeakyReLU, convblock = 8 ResConv (conv 3x3, beta
    (1, c, 1, 1)), lastconv = ConvTranspose2d(c, 4*13, 4, 2, 1) + PixelShuffle(2); and the Head `encode`
    (cnn0 3->16 stride 2, cnn1 and cnn2 16->16, cnn3 ConvTranspose2d(16, 4, 4, 2, 1))."""
    layout: dict[str, tuple[int, ...]] = {}

    def conv(name, cin, cout, k=3):
        layout[f"{name}.weight"], layout[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def transposed(name, cin, cout, k=4):
        layout[f"{name}.weight"], layout[f"{name}.bias"] = (cin, cout, k, k), (cout,)

    for index, (cin, c) in enumerate([(7 + 8, 192), (8 + 4 + 8 + 8, 128), (28, 96), (28, 64), (28, 32)]):
        conv(f"block{index}.conv0.0.0", cin, c // 2)
        conv(f"block{index}.conv0.1.0", c // 2, c)
        for res in range(8):
            conv(f"block{index}.convblock.{res}.conv", c, c)
            layout[f"block{index}.convblock.{res}.beta"] = (1, c, 1, 1)
        transposed(f"block{index}.lastconv.0", c, 4 * 13)
    conv("encode.cnn0", 3, 16)
    conv("encode.cnn1", 16, 16)
    conv("encode.cnn2", 16, 16)
    transposed("encode.cnn3", 16, 4)
    return layout


def write_published(path, layout, extra=None):
    """A flownet.pkl as published: torch-saved, every key under DataParallel's `module.`."""
    generator = torch.Generator().manual_seed(3)
    state = {f"module.{key}": torch.randn(shape, generator=generator) * 0.05 for key, shape in layout.items()}
    state.update(extra or {})
    torch.save(state, path)
    return state


def test_rife_loads_the_published_key_layout_strictly(tmp_path):
    layout = published_layout()
    assert len(layout) == 158
    # A training-only teacher block, as some published checkpoints carry, is dropped by name.
    state = write_published(tmp_path / "flownet.pkl", layout, {"module.teacher.conv0.0.0.weight": torch.zeros(1)})
    net = load_rife(tmp_path / "flownet.pkl", CPU)
    loaded = net.state_dict()
    assert {key: tuple(value.shape) for key, value in loaded.items()} == layout
    for key, value in loaded.items():
        assert torch.equal(value, state[f"module.{key}"]), key
    assert sum(p.numel() for p in IFNet().parameters()) == sum(int(np.prod(s)) for s in layout.values())


def test_a_missing_or_misshapen_key_fails_with_its_name(tmp_path):
    layout = published_layout()
    missing = dict(layout)
    del missing["block3.convblock.5.beta"]
    write_published(tmp_path / "missing.pkl", missing)
    with pytest.raises(RifeWeightsError, match=r"missing block3\.convblock\.5\.beta"):
        load_rife(tmp_path / "missing.pkl", CPU)
    misshapen = {**layout, "encode.cnn3.weight": (16, 8, 4, 4)}
    write_published(tmp_path / "misshapen.pkl", misshapen)
    with pytest.raises(RifeWeightsError, match=r"encode\.cnn3\.weight has shape \[16, 8, 4, 4\], RIFE 4.26 has"):
        load_rife(tmp_path / "misshapen.pkl", CPU)
    write_published(tmp_path / "extra.pkl", layout, {"module.block5.conv0.0.0.weight": torch.zeros(1)})
    with pytest.raises(RifeWeightsError, match=r"unexpected block5\.conv0\.0\.0\.weight"):
        load_rife(tmp_path / "extra.pkl", CPU)


# ---- the stage at a small size ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rife(tiny_model):
    return Interpolator.load(InterpolationOptions(), CPU, tiny_model, Ladder(), ColdStart())


@pytest.fixture(scope="module")
def clip():
    """Five frames of a moving texture at 16 fps (every other frame of the 32 fps clip), 64x96."""
    return torch.from_numpy(synthetic_clip(9, 64, 96, seed=2)[::2].copy())


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_rife_puts_k_minus_1_frames_between_and_keeps_the_generated_ones(rife, clip, factor):
    out = rife.run(clip, factor, "rife")
    assert out.shape == ((len(clip) - 1) * factor + 1, 64, 96, 3) and out.dtype == torch.uint8
    assert torch.equal(out[::factor], clip)
    for index in range(len(clip) - 1):  # new frames, not copies of the neighbours
        for step in range(1, factor):
            made = out[index * factor + step]
            assert not torch.equal(made, clip[index]) and not torch.equal(made, clip[index + 1])


def test_factor_1_returns_the_frames_untouched(rife, clip):
    assert rife.run(clip, 1, "rife") is clip


def test_batches_of_any_size_make_the_same_frames(tiny_model, clip):
    """One pair per batch (a budget far below one frame) against every pair in one batch."""
    small = Interpolator.load(InterpolationOptions(budget_gb=1e-9), CPU, tiny_model, Ladder(), ColdStart())
    large = Interpolator.load(InterpolationOptions(budget_gb=64), CPU, tiny_model, Ladder(), ColdStart())
    events = []
    one = small.run(clip, 3, "rife", lambda **d: events.append(d))
    assert [e["done"] for e in events if "done" in e] == [1, 2, 3, 4]  # one batch per pair, progress after each
    every = large.run(clip, 3, "rife")
    assert (one.int() - every.int()).abs().max() <= 1  # the same frames (reordered float sums: one level at most)


def test_a_scene_cut_is_repeated_not_blended(rife, clip):
    other = torch.from_numpy(synthetic_clip(5, 64, 96, seed=9)[::2].copy())
    cut = torch.cat([clip[:3], other])  # a hard cut between frames 2 and 3
    kinds = sort_pairs(cut)
    assert kinds == [Pair.MOTION, Pair.MOTION, Pair.CUT, Pair.MOTION, Pair.MOTION]
    out = rife.run(cut, 4, "rife")
    assert torch.equal(out[9], cut[2])  # t = 0.25: the frame before the cut
    assert torch.equal(out[10], cut[3]) and torch.equal(out[11], cut[3])  # t = 0.5, 0.75: the frame after
    assert not torch.equal(out[5], cut[1]) and not torch.equal(out[5], cut[2])  # a motion pair is interpolated


def test_identical_frames_are_copied(rife, clip):
    still = torch.stack([clip[0], clip[0], clip[1]])
    assert sort_pairs(still) == [Pair.SAME, Pair.MOTION]
    out = rife.run(still, 2, "rife")
    assert torch.equal(out[1], clip[0])


def test_neighbouring_frames_of_fast_motion_are_one_shot():
    """The cut threshold leaves real motion alone: 5 px a frame plus rotation, at 832x480."""
    frames = torch.from_numpy(synthetic_clip(9, 480, 832, seed=1)[::2].copy())
    assert set(sort_pairs(frames)) == {Pair.MOTION}


# ---- settings and validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"interpolate": 5}, ("interpolate: 5 is not allowed (Input should be less than or equal to 4), allowed: "
                              "integer from 1 to 4")),
        ({"interpolate": 0}, "interpolate: 0 is not allowed"),
        ({"interpolate": 2.0}, "interpolate: 2.0 is not allowed (Input should be a valid integer), allowed: integer"),
        ({"interpolate": "2"}, "interpolate: '2' is not allowed"),
        ({"interpolate": True}, "interpolate: True is not allowed"),
        ({"interpolate_model": "film"}, ("interpolate_model: 'film' is not allowed (Input should be 'rife' or "
                                         "'ffmpeg'), allowed: one of 'rife', 'ffmpeg'")),
    ],
)  # fmt: skip
def test_bad_interpolation_fields_are_refused_naming_the_field(fields, message):
    with pytest.raises(InputError) as caught:
        parse_job_input({"image": "x", **fields})
    assert message in str(caught.value)


def test_the_operator_default_factor():
    assert parse_job_input({"image": "x"}).interpolate == 1
    assert parse_job_input({"image": "x"}, default_interpolate=3).interpolate == 3
    assert parse_job_input({"image": "x", "interpolate": 1}, default_interpolate=3).interpolate == 1
    assert Settings.from_env({"WAN_DEFAULT_INTERPOLATE": "2"}).interpolation.default_factor == 2
    for name, value in (
        ("WAN_DEFAULT_INTERPOLATE", "5"),
        ("WAN_INTERPOLATE_CUT", "2"),
        ("WAN_INTERPOLATE_BUDGET_GB", "0"),
    ):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


def test_weights_are_found_in_the_setting_or_the_model_folder(tiny_model, tmp_path):
    path, _ = find_weights(InterpolationOptions(), tiny_model)
    assert path == tiny_model / "interpolation" / "flownet.pkl"
    assert find_weights(InterpolationOptions(weights=path), None)[0] == path
    empty = tmp_path / "model"
    empty.mkdir()
    found, looked = find_weights(InterpolationOptions(), empty)
    assert found is None and looked == str(empty / "interpolation")
    with pytest.raises(SettingsError, match="WAN_INTERPOLATION_MODEL=.*nowhere"):
        find_weights(InterpolationOptions(weights=tmp_path / "nowhere"), None)


def test_half_precision_falls_back_to_fp32_when_its_first_attempt_fails(tiny_model):
    ladder, cold = Ladder(["interpolation"]), ColdStart()
    stage = Interpolator.load(InterpolationOptions(precision="fp16"), CPU, tiny_model, ladder, cold)
    assert stage.dtype == torch.float32 and next(stage.net.parameters()).dtype == torch.float32
    assert ladder.report() == [
        {"what": "interpolation", "from": "fp16", "to": "fp32", "why": "injected by WAN_FAULTS=interpolation"}
    ]
    assert "in float32" in cold.facts["interpolation"] and "interpolation" in cold.seconds


def test_a_failed_half_precision_check_leaves_the_fp32_weights_as_they_were(rife, monkeypatch):
    from wan_i2v.worker.interpolation import stage

    net = rife.net
    before = {key: value.clone() for key, value in net.state_dict().items()}
    monkeypatch.setattr(stage, "HALF_PSNR_DB", 1000.0)  # no fp16 frame can be that close
    ladder = Ladder()
    dtype, error = stage.choose_precision(net, CPU, "fp16", ladder, size=(64, 64))
    assert (dtype, error) == (torch.float32, None)
    (fallback,) = ladder.report()
    assert fallback["what"] == "interpolation" and "dB from fp32, bound 1000.0 dB" in fallback["why"]
    after = net.state_dict()
    assert all(after[key].dtype == torch.float32 and torch.equal(after[key], value) for key, value in before.items())


# ---- whole jobs -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jobs(engine, tmp_path_factory):
    """On a worker without RIFE weights, the same turbo job (17 frames, 2 steps, one seed), run on first use:
    `jobs[1]`, `jobs[k]` with interpolate k (ffmpeg, the default there), `jobs["rife"]` asking for RIFE (first). Encoded
    lossless (CRF 0) so that frames can be compared decoded, exactly. `jobs.events`: the progress of all."""
    out = tmp_path_factory.mktemp("interpolated")
    bare = Interpolator(None, torch.float32, CPU, InterpolationOptions(), "WAN_INTERPOLATION_MODEL or /models/x")
    base = {"image": b64(encode(picture())), "mode": "turbo", "sample_steps": 2, "frame_num": 17, "seed": 11, "fps": 12}

    jobs = Jobs(engine, Settings(model="tiny", output_dir=out, video_crf=0), bare, base)
    jobs["rife"]  # refused at once; every job after it shows the worker carried on
    return jobs


class Jobs(dict):
    """Answers of one worker by key, each job run when first asked for; `events` holds the progress of all."""

    def __init__(self, engine, settings, interpolator, base):
        super().__init__()
        self.events, self.base = [], base
        self.worker = Worker(engine, settings, lambda job, event: self.events.append(event), interpolator)

    def __missing__(self, key):
        fields = {"interpolate": 2, "interpolate_model": "rife"} if key == "rife" else {"interpolate": key}
        self[key] = self.worker.handle({"id": f"job-{key}", "input": {**self.base, **fields}})
        return self[key]


@pytest.mark.parametrize("factor", [2, *(pytest.param(k, marks=pytest.mark.load) for k in (3, 4))])
def test_an_interpolated_job_has_n_minus_1_times_k_plus_1_frames_at_k_times_the_rate(jobs, factor):
    output = jobs[factor]
    assert "error" not in output, output
    assert (output["interpolate"], output["interpolate_model"], output["frame_num"]) == (factor, "ffmpeg", 17)
    assert output["frames_in_video"] == 16 * factor + 1 and output["fps"] == 12 * factor
    assert output["timings"]["interpolate"] > 0
    info = probe_mp4(local_file(output["video_url"]))
    assert (info["frames"], info["fps"], info["width"], info["height"]) == (16 * factor + 1, 12 * factor, 832, 480)
    # Every k-th frame is the generated frame, compared decoded against the job without interpolation. Lossless
    # H.264 (the worker set to CRF 0): a frame decodes to the same pixels whatever its neighbours.
    plain = read_frames(local_file(jobs[1]["video_url"]))
    kept = read_frames(local_file(output["video_url"]))[::factor]
    assert np.array_equal(kept, plain)


def test_factor_1_adds_nothing(jobs):
    one = jobs[1]
    assert (one["interpolate"], one["frames_in_video"], one["fps"], one["timings"]["interpolate"]) == (1, 17, 12, 0.0)
    assert "interpolate_model" not in one and probe_mp4(local_file(one["video_url"]))["frames"] == 17


def test_progress_shows_the_interpolate_phase(jobs):
    jobs[2]
    events = jobs.events
    phases = [e["phase"] for e in events]
    interpolating = [e for e in events if e["phase"] == Phase.INTERPOLATE.value]
    assert interpolating[0]["model"] == "ffmpeg"
    assert any(e.get("pairs") == 16 for e in interpolating)
    first = phases.index(Phase.INTERPOLATE.value)
    assert phases[first - 1] == Phase.VAE_DECODE.value
    assert phases[phases.index(Phase.ENCODE_MP4.value, first) - 1] == Phase.INTERPOLATE.value
    assert interpolating[-1]["percent"] == 97  # the phase's end (progress_event)


def test_a_worker_without_rife_weights_refuses_a_rife_job_and_carries_on(jobs):
    refused = jobs["rife"]
    assert refused["error"].startswith("interpolate_model: 'rife' needs RIFE weights, and this worker has none")
    assert "WAN_INTERPOLATION_MODEL" in refused["error"] and "MODEL/interpolation/" in refused["error"]
    assert "allowed here: 'ffmpeg'" in refused["error"] and "refresh_worker" not in refused
    assert "error" not in jobs[2]  # a later job, on the same worker


@pytest.mark.load
def test_a_rife_job_through_the_worker(engine, tmp_path):
    """RIFE (the tiny model's random weights) in a whole job: 17 frames -> 33 at twice the rate, the generated
    frames kept (lossless encode, compared decoded against the same job without interpolation)."""
    worker = Worker(engine, Settings(model="tiny", output_dir=tmp_path, video_crf=0))
    assert worker.interpolator.default_model == "rife"
    base = {"image": b64(encode(picture())), "mode": "turbo", "sample_steps": 2, "frame_num": 17, "seed": 5}
    plain = worker.handle({"id": "p", "input": base})
    smooth = worker.handle({"id": "s", "input": {**base, "interpolate": 2}})
    assert (smooth["interpolate_model"], smooth["frames_in_video"], smooth["fps"]) == ("rife", 33, 32), smooth
    assert probe_mp4(local_file(smooth["video_url"]))["frames"] == 33
    kept = read_frames(local_file(smooth["video_url"]))[::2]
    assert np.array_equal(kept, read_frames(local_file(plain["video_url"])))
