"""The `wan-i2v` command: single jobs, workers, health, bulk runs, the local dev endpoint and the playground.

Reads RUNPOD_API_KEY, RUNPOD_ENDPOINT_ID and RUNPOD_ENDPOINT_BASE_URL (point it at
`wan-i2v dev-endpoint` to work locally). Exit codes: 0 done, 1 a job or batch failed, 2 usage or API error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import get_args

from ..schema import JobInput, Phase
from .api import ApiError
from .client import Client, JobFailed

log = logging.getLogger("wan_i2v")

# Job fields the command passes through, straight from the schema (image is positional, loras is --lora).
FIELD_FLAGS = [name for name in JobInput.model_fields if name not in ("image", "prompt", "loras")]
LORA_HELP = (
    "a LoRA pair for this job: HIGH,LOW[,SCALE], each a file name in the worker's LoRA folder or an http(s) "
    "URL (a comma inside a URL as %%2C); leave a side empty for one expert only (style.safetensors, or "
    ",motion.safetensors); repeat for up to 3 pairs"
)


def lora_entry(text: str) -> dict:
    """`--lora HIGH,LOW[,SCALE]` as a job's `loras` entry (argparse type: ValueError -> usage error)."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 3) or not (parts[0] or parts[1]):
        raise argparse.ArgumentTypeError(f"{text!r}: give HIGH,LOW or HIGH,LOW,SCALE (one side may be empty)")
    entry: dict = {side: source for side, source in zip(("high", "low"), parts[:2], strict=True) if source}
    if len(parts) == 3:
        try:
            entry["scale"] = float(parts[2])
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: SCALE {parts[2]!r} is not a number") from None
    return entry


def _add_job_fields(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", help=JobInput.model_fields["prompt"].description)
    parser.add_argument(
        "--lora", dest="loras", action="append", type=lora_entry, metavar="HIGH,LOW[,SCALE]", help=LORA_HELP
    )
    for name in FIELD_FLAGS:
        info = JobInput.model_fields[name]
        flag = "--" + name.replace("_", "-")
        kind = info.annotation
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=info.description)
            continue
        python_type = next((t for t in (int, float) if kind == t or t in get_args(kind)), str)
        parser.add_argument(flag, type=python_type, help=info.description)


def _job_fields(args: argparse.Namespace) -> dict:
    fields = {name: getattr(args, name) for name in FIELD_FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "prompt", None) is not None:
        fields["prompt"] = args.prompt
    if getattr(args, "loras", None):
        fields["loras"] = args.loras
    return fields


def _client(args: argparse.Namespace) -> Client:
    return Client.from_env(endpoint_id=args.endpoint, api_key=args.api_key, base_url=args.base_url)


def _print(args: argparse.Namespace, data, text: str | None = None) -> None:
    if args.json or text is None:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


def _progress_bar(total: int, initial: int, desc: str):
    """A tqdm bar on a terminal, None otherwise (plain log lines are printed instead)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="job" if desc == "batch" else "%")


def _progress_event(answer: dict) -> dict | None:
    """The progress event ({"phase", "percent", ...}, see `schema.progress_event`) of a running job's answer."""
    event = answer.get("output") if answer.get("status") == "IN_PROGRESS" else None
    if not isinstance(event, dict) or not isinstance(event.get("phase"), str):
        return None
    return event if isinstance(event.get("percent"), (int, float)) else None


def _phase_text(event: dict) -> str:
    """`denoise 7/15` while denoising, the phase's name otherwise."""
    if event["phase"] == Phase.DENOISE.value and event.get("total_steps"):
        return f"{event['phase']} {event.get('step')}/{event['total_steps']}"
    return event["phase"]


def cmd_generate(args) -> int:
    client = _client(args)
    job = {"image": args.image, **_job_fields(args)}
    if not args.wait and not args.download:
        job_id = client.submit(job)
        _print(args, {"id": job_id, "status": "IN_QUEUE"}, f"submitted {job_id}")
        return 0
    bar = _progress_bar(100, 0, "generate")
    last = {"phase": None}

    def show(answer: dict) -> None:
        event = _progress_event(answer)
        if event is None:
            return
        if bar is not None:
            bar.n = event["percent"]
            bar.set_postfix_str(_phase_text(event))
            bar.refresh()
        elif event["phase"] != last["phase"]:
            log.info("job %s: %s (%s%%)", answer.get("id"), event["phase"], event["percent"])
            last["phase"] = event["phase"]

    try:
        output = client.generate(job, download_dir=args.download, timeout_s=args.timeout, on_status=show)
    finally:
        if bar is not None:
            bar.close()
    _print(
        args,
        output,
        f"{output['id']} done in {output.get('generation_time')} s: "
        f"{output.get('video_path') or output.get('video_url')}",
    )
    return 0


def cmd_job(args) -> int:
    """status, cancel or retry one job."""
    answer = getattr(_client(args), args.command)(args.job)
    _print(args, answer, f"{answer.get('id')}: {answer.get('status')}")
    return 0


def cmd_purge(args) -> int:
    answer = _client(args).purge_queue()
    _print(args, answer, f"removed {answer.get('removed', 0)} queued jobs")
    return 0


def cmd_health(args) -> int:
    health = _client(args).health()
    _print(args, {"jobs": health.jobs, "workers": health.workers}, health.line())
    return 0


def cmd_workers(args) -> int:
    management = _client(args).management
    count = {"up": 1, "down": 0, "set": args.count}[args.action]
    if count is None:
        print("wan-i2v workers set: give the number of min workers", file=sys.stderr)
        return 2
    if args.action == "down" and not args.force:
        scaled, health = management.scale_down_if_idle()
        if not scaled:
            print(f"not scaling down, the endpoint is busy ({health.line()}); use --force", file=sys.stderr)
            return 1
        answer = {"workers": {"min": 0}}
    else:
        answer = management.set_workers(min_workers=count, max_workers=args.max)
    if args.wait and count > 0:
        management.wait_ready(
            timeout_s=args.timeout, poll_s=5, on_poll=lambda h, s: log.info("%3.0f s  %s", s, h.line())
        )
    _print(args, answer, f"min workers set to {count}")
    return 0


def cmd_batch(args) -> int:
    from . import batch as bulk

    price = args.price_per_second if args.price_per_second is not None else bulk.DEFAULT_PRICE_PER_GPU_S
    download_dir = Path(args.download).resolve() if args.download else None
    ledger_path = Path(args.ledger) if args.ledger else (download_dir or Path.cwd()) / "wan-i2v-batch.sqlite"
    try:
        jobs = None if args.resume else _batch_jobs(args)
        if jobs is not None and args.dry_run:
            bulk.dry_run(jobs, ledger_path, price)
            return 0
        client = _client(args)  # before the ledger is written: a missing key leaves no half-started batch
        if jobs is None:
            batch = bulk.Batch.resume(ledger_path, download_dir)
        else:
            batch = bulk.Batch.plan_new(ledger_path, jobs, download_dir)
    except bulk.BatchError as exc:
        print(f"wan-i2v batch: {exc}", file=sys.stderr)
        return 2
    options = bulk.RunOptions(
        manage_workers=not args.no_manage_workers,
        max_in_flight=args.max_in_flight,
        retries=args.retries,
        poll_s=args.poll,
    )
    with batch:
        counts = _run_batch(batch, client, options)
        seconds, dollars = batch.cost(price)
        download_dir = batch.download_dir
    summary = {
        "counts": counts,
        "gpu_seconds": round(seconds, 1),
        "cost_usd": round(dollars, 4),
        "ledger": str(ledger_path),
        "index": str(download_dir / "index.csv") if download_dir else None,
    }
    _print(
        args,
        summary,
        f"{counts['completed']} completed, {counts['failed']} failed, {counts['cancelled']} cancelled; "
        f"{seconds:.1f} GPU s, about ${dollars:.4f}; ledger {ledger_path}"
        + (f"; videos and index.csv in {download_dir}" if download_dir else ""),
    )
    return 0 if counts["failed"] == 0 and counts["cancelled"] == 0 else 1


def _batch_jobs(args) -> list:
    from . import batch as bulk

    if not args.prompts or not args.images_dir:
        raise bulk.BatchError("give PROMPTS_FILE and --images-dir (or --resume)")
    images, prompts = bulk.list_images(Path(args.images_dir)), bulk.read_prompts(Path(args.prompts))
    return bulk.plan_jobs(images, prompts, args.one_to_one, _job_fields(args))


def _run_batch(batch, client: Client, options) -> dict[str, int]:
    """Run the batch with a progress bar on a terminal, a log line per job move otherwise."""
    counts = batch.counts()
    total = sum(counts.values())
    bar = _progress_bar(total, counts["completed"] + counts["failed"] + counts["cancelled"], "batch")

    def on_change(row, state):
        if bar is not None and state in ("completed", "failed", "cancelled"):
            bar.update(1)
        elif bar is None and state != "submitting":
            log.info("job %d/%d %s%s", row.position + 1, total, state, f" ({row.job_id})" if row.job_id else "")

    try:
        return batch.run(client, options, on_change)
    finally:
        if bar is not None:
            bar.close()


def cmd_dev_endpoint(args) -> int:
    from .devserver import DevEndpoint, serve_until_signalled

    endpoint = DevEndpoint(
        api_key=args.api_key or "",
        endpoint_id=args.endpoint_id,
        port=args.port,
        host=args.host,
        workers_max=args.workers_max,
        idle_timeout_s=args.idle_timeout,
        handler=Path(args.handler),
        log_dir=Path(args.log_dir) if args.log_dir else None,
    ).start()
    print(f"dev endpoint: RUNPOD_ENDPOINT_BASE_URL={endpoint.url}/v2 RUNPOD_ENDPOINT_ID={args.endpoint_id}", flush=True)
    serve_until_signalled(endpoint)  # SIGINT, SIGTERM or SIGHUP: stops the workers too
    return 0


def cmd_playground(args) -> int:
    try:
        from .playground import History, Playground, PlaygroundServer, is_loopback
    except ImportError as exc:
        raise ApiError(f"the playground needs Flask: pip install 'wan-i2v[playground]' ({exc})") from None
    if not is_loopback(args.host) and not args.allow_remote:
        raise ApiError(
            f"--host {args.host}: the playground binds 127.0.0.1 unless you also pass --allow-remote "
            "(anyone who can reach the address and has the printed token can spend your endpoint's GPU time)"
        )
    dev = None
    if args.dev:
        dev, client = _dev_endpoint(args)
        label = f"dev endpoint at {dev.url} (WAN_MODEL={os.environ.get('WAN_MODEL')})"
    else:
        client = _client(args)
        label = f"endpoint {client.endpoint_id}" + (f" at {client.base_url}" if args.base_url else " on RunPod")
    # A page polls every half second: an unreachable endpoint should cost a poll seconds, not minutes of retries.
    client.api.retries, client.api.timeout_s = min(client.api.retries, 1), min(client.api.timeout_s, 10.0)
    history = History(Path(args.data).expanduser())
    try:
        server = PlaygroundServer(Playground(client, history, label), args.host, args.port).start()
    except OSError as exc:  # the port is taken, or the address is not this machine's
        history.close()
        if dev:
            dev.close()
        raise ApiError(f"the playground cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print(f"playground for {label}: {server.url if is_loopback(args.host) else server.url_with_token}", flush=True)
    if dev:  # the page's curl and Python snippets read the key from RUNPOD_API_KEY
        print(f"to run its snippets: export RUNPOD_API_KEY={client.api.api_key}  (this dev endpoint's own key)")
    if not is_loopback(args.host):
        print(f"access token (keep it private): {server.token}", flush=True)
    closing = _Closing([server, *([dev] if dev else []), history])
    from .devserver import serve_until_signalled

    serve_until_signalled(closing)
    return 0


class _Closing:
    """Closes each of its parts once, in order (for serve_until_signalled)."""

    def __init__(self, parts: list):
        self.parts = parts

    def close(self) -> None:
        for part in self.parts:
            part.close()


def _dev_endpoint(args):
    """A dev endpoint of this process's own, with a random key the page never sees."""
    import secrets

    from .devserver import DevEndpoint

    if not os.environ.get("WAN_MODEL"):
        tiny = Path("models/tiny")
        if not (tiny / "model_index.json").is_file():
            raise ApiError(
                "--dev: set WAN_MODEL, or build the tiny model first: python builder/tiny_model.py models/tiny"
            )
        os.environ["WAN_MODEL"] = str(tiny.resolve())
    key = secrets.token_urlsafe(24)
    # One worker kept warm for ten idle minutes: a person trying settings should not wait for cold starts.
    dev = DevEndpoint(
        api_key=key, endpoint_id="dev", port=0, handler=Path(args.handler), workers_max=1, idle_timeout_s=600
    ).start()
    return dev, Client.from_env(env={}, endpoint_id="dev", api_key=key, base_url=f"{dev.url}/v2")


def build_parser() -> argparse.ArgumentParser:
    def common(defaults: bool) -> argparse.ArgumentParser:
        # Accepted before or after the command; a subcommand's copy only overrides when given.
        p = argparse.ArgumentParser(add_help=False, argument_default=None if defaults else argparse.SUPPRESS)
        p.add_argument("--endpoint", help="endpoint id (default: RUNPOD_ENDPOINT_ID)")
        p.add_argument("--api-key", help="RunPod API key (default: RUNPOD_API_KEY)")
        p.add_argument("--base-url", help="queue API base URL (default: RUNPOD_ENDPOINT_BASE_URL or RunPod's)")
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
        p.add_argument("-v", "--verbose", action="store_true")
        return p

    parser = argparse.ArgumentParser(
        prog="wan-i2v", description="Operate a wan-i2v endpoint on RunPod.", parents=[common(True)]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    shared = common(False)
    add_parser = sub.add_parser
    sub.add_parser = lambda *a, **k: add_parser(*a, parents=[shared], **k)

    p = sub.add_parser("generate", help="submit one job; --wait for it, --download its video")
    p.add_argument("image", help="local image file, http(s) URL or data URI")
    _add_job_fields(p)
    p.add_argument("--wait", action="store_true", help="wait until the job ends")
    p.add_argument("--download", metavar="DIR", help="wait, then save the MP4 into DIR")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait (default 3600)")
    p.set_defaults(run=cmd_generate)

    for name, text in (
        ("status", "a job's status"),
        ("cancel", "cancel a job"),
        ("retry", "retry a FAILED or TIMED_OUT job"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("job")
        p.set_defaults(run=cmd_job)
    sub.add_parser("purge-queue", help="remove every queued job").set_defaults(run=cmd_purge)
    sub.add_parser("health", help="the endpoint's job and worker counts").set_defaults(run=cmd_health)

    p = sub.add_parser("workers", help="min workers: up (1), down (0, only when idle), set N")
    p.add_argument("action", choices=["up", "down", "set"])
    p.add_argument("count", nargs="?", type=int)
    p.add_argument("--max", type=int, help="also set max workers")
    p.add_argument("--wait", action="store_true", help="wait until a worker is ready")
    p.add_argument("--force", action="store_true", help="down even while jobs are queued or running")
    p.add_argument("--timeout", type=float, default=420)
    p.set_defaults(run=cmd_workers)

    p = sub.add_parser("batch", help="every image x every prompt, with a resumable ledger")
    p.add_argument("prompts", nargs="?", metavar="PROMPTS_FILE", help="prompts separated by --- lines or blank lines")
    p.add_argument("--images-dir", help="folder of .jpg/.jpeg/.png/.webp/.gif images")
    p.add_argument("--one-to-one", action="store_true", help="pair images and prompts in order instead")
    p.add_argument("--dry-run", action="store_true", help="list the jobs and the estimated cost; submit nothing")
    p.add_argument("--download", metavar="DIR", help="save each finished video (and index.csv) into DIR")
    p.add_argument("--ledger", help="ledger file (default: DIR/wan-i2v-batch.sqlite)")
    p.add_argument("--resume", action="store_true", help="continue the batch in the ledger")
    p.add_argument("--no-manage-workers", action="store_true", help="leave min workers alone")
    p.add_argument("--max-in-flight", type=int, default=4, help="jobs submitted and not yet finished (default 4)")
    p.add_argument("--retries", type=int, default=1, help="retries of a FAILED or TIMED_OUT job (default 1)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between status polls (default 5)")
    p.add_argument("--price-per-second", type=float, help="USD per GPU-second for the cost estimate")
    _add_job_fields(p)
    p.set_defaults(run=cmd_batch)

    p = sub.add_parser("dev-endpoint", help="a local RunPod-compatible endpoint running handler.py workers")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--endpoint-id", default="dev")
    p.add_argument("--workers-max", type=int, default=1)
    p.add_argument("--idle-timeout", type=float, default=5.0, help="seconds before an idle extra worker stops")
    p.add_argument("--handler", default="handler.py", help="the worker's handler.py (default: ./handler.py)")
    p.add_argument("--log-dir", help="write each worker's output to DIR/worker-N.log")
    p.set_defaults(run=cmd_dev_endpoint)

    p = sub.add_parser("playground", help="a local web page to try the endpoint, watch jobs and keep their videos")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (anything but loopback needs --allow-remote)")
    p.add_argument("--allow-remote", action="store_true", help="allow --host other than loopback; prints the token")
    p.add_argument("--dev", action="store_true", help="start a local dev endpoint (WAN_MODEL, default models/tiny)")
    p.add_argument("--handler", default="handler.py", help="with --dev: the worker's handler.py")
    p.add_argument(
        "--data",
        default=str(Path(os.environ.get("XDG_DATA_HOME") or "~/.local/share") / "wan-i2v" / "playground"),
        help="where the history (SQLite), videos and posters are kept",
    )
    p.set_defaults(run=cmd_playground)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if args.command == "dev-endpoint" and not args.api_key:
        args.api_key = os.environ.get("RUNPOD_API_KEY")
        if not args.api_key:
            print("wan-i2v dev-endpoint: give --api-key or set RUNPOD_API_KEY (clients must send it)", file=sys.stderr)
            return 2
    try:
        return args.run(args)
    except JobFailed as failed:
        _print(args, {"id": failed.job_id, "status": failed.status, "error": failed.error}, str(failed))
        return 1
    except (ApiError, ValueError, TimeoutError) as exc:
        print(f"wan-i2v: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
