"""The operator side: runs on an operator's machine, needs no torch.

api (HTTP to RunPod, retries) -> management (min/max workers, health) -> client (jobs) -> batch +
ledger + handoff (bulk runs) -> cli (the `wan-i2v` command); devserver (a local RunPod-compatible
endpoint that runs real workers). Never imports the worker side (`wan_i2v.worker`), torch, diffusers,
PIL, boto3 or runpod at import.
"""
