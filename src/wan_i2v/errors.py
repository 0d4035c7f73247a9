"""Errors that cross module boundaries. The worker turns each into a job `error`."""


class JobError(Exception):
    """A job that cannot be done; the message is shown to the caller as the job's `error`.

    `refresh_worker` asks RunPod to replace this worker after the job, for states the worker
    can no longer trust (CUDA out of memory, an unexpected failure inside the model).
    """

    refresh_worker = False


class InputError(JobError):
    """The caller's input is wrong: the message names the field and what is allowed."""


class StorageError(JobError):
    """The finished video could not be stored or returned."""


class EncodeError(JobError):
    """ffmpeg could not write the MP4 (a full disk, a broken binary); the worker asks to be replaced."""

    refresh_worker = True


class InterpolationError(JobError):
    """Frame interpolation failed inside the worker (ffmpeg's filter, or the RIFE model); the worker asks to be
    replaced. A job asking for interpolation the worker cannot do is an InputError instead."""

    refresh_worker = True


class OutOfMemoryError(JobError):
    """The GPU ran out of memory; the worker asks to be replaced."""

    refresh_worker = True


class ModelNotFoundError(Exception):
    """The model weights are not on disk. Raised at cold start, never per job."""


class ModelConfigError(ModelNotFoundError):
    """The weights are on disk, but their configs are not Wan2.2 I2V-A14B's (checked before loading)."""


class ColdStartError(Exception):
    """Nothing can serve: a cold-start lever failed on every rung of its ladder (worker/levers.py)."""


class SettingsError(ValueError):
    """An environment variable is missing or malformed; raised at cold start (or by the client's set-up)."""
