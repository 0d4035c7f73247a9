"""wan-i2v: Wan2.2 I2V-A14B image-to-video as a RunPod serverless worker, plus its client tools."""

__version__ = "0.1.0"
