import numpy as np
import pytest

from wan_i2v.errors import EncodeError
from wan_i2v.worker.video import encode_mp4, probe_mp4, read_frames


def moving_frames(count=17, height=96, width=160):
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([(x + 4 * i) % 256, (y * 2) % 256, np.full_like(x, 128)], -1).astype(np.uint8) for i in range(count)
    ]
    return np.stack(frames)


@pytest.mark.parametrize("fps", [8, 16, 30])
def test_mp4_holds_exactly_the_frames_at_the_fps(tmp_path, fps):
    frames = moving_frames()
    path = tmp_path / "v.mp4"
    encode_mp4(frames, path, fps)
    info = probe_mp4(path)
    assert info["frames"] == 17 and (info["width"], info["height"]) == (160, 96)
    assert info["fps"] == fps and info["codec"].startswith("h264") and info["pix_fmt"].startswith("yuv420p")


def test_mp4_is_faststart_and_close_to_the_input(tmp_path):
    frames = moving_frames()
    path = tmp_path / "v.mp4"
    encode_mp4(frames, path, 16)
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "moov atom must come first for streaming"
    decoded = read_frames(path)
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 6


def test_wrong_frame_array_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        encode_mp4(np.zeros((4, 16, 16), np.uint8), tmp_path / "v.mp4", 16)


def test_a_full_disk_is_named_in_the_error(tmp_path):
    path = tmp_path / "v.mp4"
    path.symlink_to("/dev/full")  # every write to the output fails with ENOSPC
    with pytest.raises(EncodeError, match=r"^encoding the MP4 failed: no space left on the worker's disk$") as caught:
        encode_mp4(moving_frames(), path, 16)
    assert caught.value.refresh_worker is True


def test_a_crashing_or_missing_encoder_gives_its_own_message(tmp_path, monkeypatch):
    broken = tmp_path / "ffmpeg"
    broken.write_text("#!/bin/sh\necho 'Segmentation fault (core dumped)' >&2\nexit 139\n")
    broken.chmod(0o755)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(broken))
    with pytest.raises(EncodeError, match=r"^encoding the MP4 failed: Segmentation fault \(core dumped\)$"):
        encode_mp4(moving_frames(), tmp_path / "a.mp4", 16)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "missing-ffmpeg"))
    with pytest.raises(EncodeError, match=r"^encoding the MP4 failed: could not start ffmpeg \(No such file"):
        encode_mp4(moving_frames(), tmp_path / "b.mp4", 16)
