"""The worker side: runs on the GPU inside the RunPod worker.

settings (environment) -> job (the job boundary: validate, fetch, generate, encode, store) using
images + netguard (intake and the address guard), engine (the model: weights + model_config find and
check the copy, components load it part by part, prepared_cache keeps prepared experts), video (MP4),
storage (bucket, local folder or inline) and hostmem (heap trim between jobs, peak host memory).
Imports torch, diffusers and PIL; the operator side (`wan_i2v.ops`) never imports this package.
"""
