"""RunPod serverless entry point for wan-i2v.

The model is loaded once, here at import (the worker's cold start), never per job.
    python handler.py                  run test_input.json once, locally
    python handler.py --rp_serve_api   serve RunPod's local API (POST /runsync, /run)
"""

import logging
import os
import sys

# The SDK's default DEBUG level logs whole jobs: base64 images and a job's s3Config secret.
os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")

import runpod

from wan_i2v.errors import ColdStartError, ModelNotFoundError, SettingsError
from wan_i2v.worker.job import build_worker

logging.basicConfig(
    level=os.environ.get("WAN_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)


def send_progress(job: dict, event: dict) -> None:
    """Progress shows on /status while the job runs; only a real RunPod worker has somewhere to send it."""
    if os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"):
        runpod.serverless.progress_update(job, event)


try:
    worker = build_worker(progress=send_progress)
except (ModelNotFoundError, SettingsError, ColdStartError) as exc:
    sys.exit(f"wan-i2v cannot start: {exc}")


def handler(job: dict) -> dict:
    return worker.handle(job)


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})
