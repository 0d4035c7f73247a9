"""A folder whose configs are not Wan2.2 I2V-A14B's is refused before any weight is read, naming the file, the
field, the value found and the value expected (diffusers itself would only warn and serve bad videos)."""

import json
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT

from wan_i2v.errors import ModelConfigError
from wan_i2v.worker import engine as engine_module
from wan_i2v.worker.engine import Engine

REFUSED = [
    # (file, field, value written, what the error says)
    ("transformer/config.json", "image_dim", 1280, "transformer/config.json: image_dim is 1280; expected null"),
    (
        "transformer_2/config.json",
        "added_kv_proj_dim",
        5120,
        "transformer_2/config.json: added_kv_proj_dim is 5120; expected null",
    ),
    ("transformer/config.json", "in_channels", 16, "transformer/config.json: in_channels is 16; expected 36"),
    (
        "model_index.json",
        "expand_timesteps",
        True,
        "model_index.json: expand_timesteps is true; expected false or absent",
    ),
    ("model_index.json", "boundary_ratio", None, "model_index.json: boundary_ratio is missing; expected a number"),
]


def edited_copy(tiny_model, tmp_path, file: str, field: str, value):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    config = json.loads((copy / file).read_text())
    if value is None:
        del config[field]
    else:
        config[field] = value
    (copy / file).write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("file, field, value, message", REFUSED, ids=[r[1] for r in REFUSED])
def test_each_refused_config_stops_the_cold_start_before_anything_loads(
    tiny_model, tmp_path, monkeypatch, file, field, value, message
):
    copy = edited_copy(tiny_model, tmp_path, file, field, value)

    def never(*args, **kwargs):
        raise AssertionError("weights were read for a refused config")

    monkeypatch.setattr(engine_module, "skeleton_pipeline", never)
    with pytest.raises(ModelConfigError) as refused:
        Engine.load(str(copy))
    assert message in str(refused.value) and str(copy) in str(refused.value)


def test_experts_that_differ_are_refused_naming_both_files(tiny_model, tmp_path):
    copy = edited_copy(tiny_model, tmp_path, "transformer_2/config.json", "ffn_dim", 64)
    with pytest.raises(ModelConfigError, match="transformer/config.json and transformer_2/config.json differ in "
                       "ffn_dim: 32 and 64; expected the same value"):  # fmt: skip
        Engine.load(str(copy))


def test_the_worker_exits_with_the_refusal_and_the_builder_check_fails_too(tiny_model, tmp_path, capsys):
    copy = edited_copy(tiny_model, tmp_path, "transformer/config.json", "image_dim", 1280)
    env = {"WAN_MODEL": str(copy), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "handler.py")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "wan-i2v cannot start:" in done.stderr and "image_dim is 1280; expected null" in done.stderr
    sys.path.insert(0, str(ROOT / "builder"))
    from fetch_weights import main as fetch_weights

    assert fetch_weights(["--verify-only", "--dest", str(copy)]) == 1
    assert "image_dim is 1280" in capsys.readouterr().err
