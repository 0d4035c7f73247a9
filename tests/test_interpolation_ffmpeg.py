"""The ffmpeg minterpolate backend: frame count, the generated frames kept bit for bit, quality against plain
repetition on bench/motion.py's moving texture, and its errors."""

import sys

import numpy as np
import pytest
from helpers import ROOT

from wan_i2v.errors import InterpolationError
from wan_i2v.worker.interpolation.ffmpeg import minterpolate

sys.path.insert(0, str(ROOT / "bench"))
from motion import restoration_margin, synthetic_clip


def noise_frames(count=5, height=96, width=128, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_k_times_interpolation_gives_f_minus_1_times_k_plus_1_frames_with_the_originals_bit_exact(factor):
    frames = synthetic_clip(5, 96, 128, seed=1)
    out = minterpolate(frames, factor)
    assert out.shape == ((5 - 1) * factor + 1, 96, 128, 3) and out.dtype == np.uint8
    assert np.array_equal(out[::factor], frames)
    for j in range(len(out)):  # the new frames are new: none is a copy of the frame before or after it
        if j % factor:
            before, after = frames[j // factor], frames[j // factor + 1]
            assert not np.array_equal(out[j], before) and not np.array_equal(out[j], after), j


@pytest.mark.parametrize("count", [2, 3])
def test_the_shortest_clips_still_get_every_frame(count):
    """ffmpeg's filter drops the last interval unless it is given one frame past it (see the module docstring)."""
    frames = noise_frames(count)
    out = minterpolate(frames, 2)
    assert out.shape == (2 * count - 1, 96, 128, 3) and np.array_equal(out[::2], frames)


def test_odd_sizes_work():
    frames = noise_frames(3, height=95, width=127)
    out = minterpolate(frames, 3)
    assert out.shape == (7, 95, 127, 3) and np.array_equal(out[::3], frames)


def test_factor_1_and_a_single_frame_come_back_unchanged():
    frames = noise_frames()
    assert np.array_equal(minterpolate(frames, 1), frames)
    assert minterpolate(frames, 1).tobytes() == frames.tobytes()
    assert np.array_equal(minterpolate(frames[:1], 4), frames[:1])


def test_restored_frames_beat_repetition_by_8_db():
    """Drop the odd frames of a 32 fps moving texture and restore them at 2x. Measured at 160x96, 17 frames,
    seed 0: minterpolate 33.6 dB, repetition 21.4 dB, a margin of 12.1 dB. Below the bound: repeating frames
    (0 dB) and a plain 50/50 blend of the neighbours (26.6 dB, 5.2 dB), so the motion compensation is what passes."""
    result = restoration_margin(minterpolate, synthetic_clip(17, 96, 160, seed=0))
    assert result["kept_unchanged"] is True and result["restored"] == 8
    assert result["margin_db"] > 8.0, result
    assert result["method_psnr_db"] > 29.0, result


@pytest.mark.parametrize(
    "frames, factor, message",
    [
        (
            np.zeros((4, 96, 128, 3), np.float32),
            2,
            r"expected \(F, H, W, 3\) uint8 frames, got \(4, 96, 128, 3\) float32",
        ),
        (np.zeros((96, 128, 3), np.uint8), 2, r"expected \(F, H, W, 3\) uint8 frames, got \(96, 128, 3\) uint8"),
        (np.zeros((4, 96, 128, 4), np.uint8), 2, r"expected \(F, H, W, 3\) uint8 frames"),
        (np.zeros((0, 96, 128, 3), np.uint8), 2, r"expected at least one frame"),
        (np.zeros((4, 96, 128, 3), np.uint8), 0, r"expected an integer factor of at least 1, got 0"),
        (np.zeros((4, 96, 128, 3), np.uint8), 2.0, r"expected an integer factor of at least 1, got 2.0"),
        (
            np.zeros((4, 24, 128, 3), np.uint8),
            2,
            r"expected frames of at least 32x32 pixels for minterpolate, got 128x24",
        ),
    ],
)
def test_a_malformed_input_is_refused_naming_what_was_expected(frames, factor, message):
    with pytest.raises(ValueError, match=message):
        minterpolate(frames, factor)


def test_a_failing_ffmpeg_raises_interpolation_error_with_its_last_line(tmp_path, monkeypatch):
    crashing = tmp_path / "crashing"
    crashing.write_text("#!/bin/sh\necho 'first line' >&2\necho 'Segmentation fault (core dumped)' >&2\nexit 139\n")
    short = tmp_path / "short"  # exits 0 after writing one frame of a 96x128 clip
    short.write_text("#!/bin/sh\ncat > /dev/null\nhead -c 36864 /dev/zero\necho 'done' >&2\n")
    for script in (crashing, short):
        script.chmod(0o755)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(crashing))
    with pytest.raises(
        InterpolationError, match=r"^frame interpolation failed: Segmentation fault \(core dumped\)$"
    ) as caught:
        minterpolate(noise_frames(), 2)
    assert caught.value.refresh_worker is True
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(short))
    with pytest.raises(
        InterpolationError, match=r"^frame interpolation failed: ffmpeg returned 1 frames, expected 9; done$"
    ):
        minterpolate(noise_frames(), 2)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "missing-ffmpeg"))
    with pytest.raises(InterpolationError, match=r"^frame interpolation failed: could not start ffmpeg \(No such file"):
        minterpolate(noise_frames(), 2)
