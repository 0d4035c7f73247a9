# wan-i2v: Wan2.2 I2V-A14B image-to-video on RunPod serverless. Two images from this file:
#   docker build -t wan-i2v .                                          # the worker's bf16 copy baked in (about 69 GB more)
#   docker build --build-arg WAN_BAKE_WEIGHTS=false -t wan-i2v:slim .  # no weights: RunPod's model cache or a volume
#   docker build --build-arg WAN_MODEL_REVISION=<commit> -t wan-i2v .  # another commit of the model (README, "Deploy")
# Python 3.11 on Debian bookworm, as CI tests it, with the package list CI installs (builder/requirements.txt);
# torch is its CUDA 12.6 build from PyTorch's own index (the wheels bring the CUDA runtime, the host its driver).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A C compiler: Triton, which compiles torch.compile's GPU kernels, builds its small launcher with it at run time.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# 1. The model stack, pinned: the same list, at the same versions, that the tests run on.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
COPY builder/requirements.txt builder/requirements.txt
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -r builder/requirements.txt

# 2. Bake the weights in their own layer, before the code, so that code changes do not download them again:
#    the expert shards converted to bf16 as they arrive (about 69 GB; 126 GB as published), provenance.json,
#    and the folder checked with the worker's own rules. The turbo LoRA pair (README, "Turbo mode") goes to
#    /models/wan/turbo-lora; an empty WAN_TURBO_LORA_FILES skips it. The RIFE v4.26 weights for frame interpolation
#    (README, "Smooth video"; 23 MB, sha256-checked) go to /models/wan/interpolation; an empty WAN_RIFE_FILE skips
#    them (jobs then interpolate with ffmpeg). WAN_BAKE_WEIGHTS=false builds the slim image.
ARG WAN_BAKE_WEIGHTS=true
ARG WAN_MODEL_ID=Wan-AI/Wan2.2-I2V-A14B-Diffusers
ARG WAN_MODEL_REVISION=596658fd9ca6b7b71d5057529bbf319ecbc61d74
ARG WAN_WEIGHTS_DTYPE=bf16
ARG WAN_TURBO_LORA_REPO=lightx2v/Wan2.2-Distill-Loras
ARG WAN_TURBO_LORA_FILES=wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors,wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors
ARG WAN_RIFE_REPO=hzwer/RIFE
ARG WAN_RIFE_REVISION=01fdc7e97404120c243c3ea7b427046e5dc7643e
ARG WAN_RIFE_FILE=RIFEv4.26_0921.zip
ARG WAN_RIFE_SHA256=1fa9b9cda3d9b8c3e301359e2595960902f97bf926c08598b0e9957a3f3f760e
COPY builder/fetch_weights.py builder/fetch_weights.py
COPY src/wan_i2v/__init__.py src/wan_i2v/errors.py src/wan_i2v/files.py src/wan_i2v/
COPY src/wan_i2v/worker/__init__.py src/wan_i2v/worker/weights.py src/wan_i2v/worker/safetensors_layout.py src/wan_i2v/worker/model_config.py src/wan_i2v/worker/components.py src/wan_i2v/worker/
COPY src/wan_i2v/worker/interpolation/__init__.py src/wan_i2v/worker/interpolation/rife.py src/wan_i2v/worker/interpolation/
RUN if [ "${WAN_BAKE_WEIGHTS}" = "true" ]; then \
        python builder/fetch_weights.py --model "${WAN_MODEL_ID}" --revision "${WAN_MODEL_REVISION}" --dtype "${WAN_WEIGHTS_DTYPE}" \
            --dest /models/wan --turbo-lora-repo "${WAN_TURBO_LORA_REPO}" --turbo-lora-files "${WAN_TURBO_LORA_FILES}" \
            --rife-repo "${WAN_RIFE_REPO}" --rife-revision "${WAN_RIFE_REVISION}" --rife-file "${WAN_RIFE_FILE}" \
            --rife-sha256 "${WAN_RIFE_SHA256}"; \
    fi

# 3. The worker itself.
COPY pyproject.toml README.md ./
COPY src src
RUN pip install --no-deps .
COPY handler.py test_input.json ./

# Nothing is downloaded at run time. WAN_MODEL is the hub id: the worker takes the first complete copy of
# RunPod's model cache, a network volume's /runpod-volume/models/<name>, the baked /models/wan, the local
# Hugging Face cache (README, "Deploy"), and fails fast naming each place if none is complete.
# Compiled kernels are kept on the network volume when there is one, else in the image's /cache; prepared
# experts only on a network volume (a container disk starts empty at every cold start).
RUN mkdir -p /cache/torch-compile
ENV WAN_MODEL=${WAN_MODEL_ID} \
    WAN_BAKED_MODEL=/models/wan \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    WAN_OUTPUT_DIR=/tmp/wan-outputs

CMD ["python", "-u", "handler.py"]
