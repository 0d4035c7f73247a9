"""builder/fetch_weights.py makes the worker's own bf16 copy: the hub publishes the experts in fp32, and this
converts each shard as it comes (here from a local fp32 folder, with no network), keeping in fp32 what
diffusers keeps in fp32, with a provenance file the worker reports in every job's output."""

import json
import sys

from helpers import QUICKEST, ROOT

from wan_i2v.worker.safetensors_layout import check_layout

CONVERTED = ("transformer", "transformer_2", "text_encoder")


def headers(folder):
    return {path.name: check_layout(path) for path in sorted(folder.glob("*.safetensors"))}


def test_a_fp32_copy_converted_to_bf16_keeps_diffusers_fp32_modules_and_serves_a_job(tmp_path, caplog, capsys):
    from diffusers import WanTransformer3DModel

    from wan_i2v.worker.engine import Engine
    from wan_i2v.worker.job import Worker
    from wan_i2v.worker.settings import Settings

    sys.path.insert(0, str(ROOT / "builder"))
    from fetch_weights import main as fetch_weights
    from tiny_model import write_tiny_model

    source, dest = tmp_path / "fp32", tmp_path / "bf16"
    write_tiny_model(source, max_shard_size="40KB")  # fp32 and sharded, as the hub publishes the experts
    assert fetch_weights(["--source", str(source), "--dest", str(dest)]) == 0
    assert "complete Wan2.2 I2V diffusers pipeline" in capsys.readouterr().out

    keep = WanTransformer3DModel._keep_in_fp32_modules
    for component in CONVERTED:
        before, after = headers(source / component), headers(dest / component)
        assert len(after) == len(before) == 3  # sharded as published, same names
        kept = 0
        for name, header in after.items():
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                assert before[name][key]["dtype"] == "F32" and before[name][key]["shape"] == info["shape"]
                fp32 = component != "text_encoder" and any(part in keep for part in key.split("."))
                assert info["dtype"] == ("F32" if fp32 else "BF16"), (component, key)
                kept += fp32
        assert kept > 0 if component != "text_encoder" else kept == 0
        index = json.loads(next((dest / component).glob("*.index.json")).read_text())
        sizes = sum(i["data_offsets"][1] - i["data_offsets"][0] for h in after.values() for k, i in h.items()
                    if k != "__metadata__")  # fmt: skip
        assert index["metadata"]["total_size"] == sizes
        assert set(index["weight_map"].values()) == set(after)
    assert headers(dest / "vae") == headers(source / "vae")  # the VAE stays as published

    provenance = json.loads((dest / "provenance.json").read_text())
    assert provenance["dtype"] == "bf16" and provenance["repo"].startswith("tiny-random")
    assert provenance["source"] == f"local folder {source}" and provenance["date"].endswith("Z")

    with caplog.at_level("INFO", logger="wan_i2v.worker.engine"):
        engine = Engine.load(str(dest))
    assert f"weights: {dest} (directory): tiny-random (builder/tiny_model.py, seed 0) at an unknown commit, bf16" in (
        caplog.text
    )
    output = Worker(engine, Settings(model=str(dest), output_dir=tmp_path / "out")).handle({"input": QUICKEST})
    assert "error" not in output, output
    assert output["model_revision"] == {key: provenance[key] for key in ("repo", "dtype", "date")}
