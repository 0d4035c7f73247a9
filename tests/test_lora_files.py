"""Where a job's LoRA files come from (`LoraStore`): names in the worker's folder and their tricks, the
safetensors layout check, URLs through the address guard with a cap and deadlines, and the download
cache (hits, ETag revalidation, least-recently-used eviction, one download for concurrent jobs).
Small files and a loopback server: no model involved."""

import hashlib
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from safetensors.torch import save_file

from wan_i2v.errors import InputError
from wan_i2v.worker.lora_files import LoraStore, check_safetensors, is_url
from wan_i2v.worker.netguard import UrlPolicy

LOOPBACK = UrlPolicy.from_allow_list("127.0.0.1")


def lora_bytes(tmp_path, seed: int = 0, rows: int = 4) -> bytes:
    """A small, valid safetensors file's bytes (different for each seed)."""
    generator = torch.Generator().manual_seed(seed)
    path = tmp_path / f"made-{seed}-{rows}.safetensors"
    save_file({"a.lora_down.weight": torch.randn(rows, 8, generator=generator), "b": torch.ones(3)}, str(path))
    return path.read_bytes()


def store_for(tmp_path, folder=None, cache_bytes=10**6, max_bytes=10**6, **limits) -> LoraStore:
    return LoraStore(folder, tmp_path / "cache", cache_bytes, max_bytes, LOOPBACK, **limits)


def fetch_one(store: LoraStore, source: str, field: str = "loras[0].high"):
    """Fetch inside a checkout; returns the LoraFile and the bytes read while the checkout was open."""
    with store.checkout() as fetch:
        found = fetch(field, source)
        return found, found.path.read_bytes()


class CountingServer:
    """A loopback server for the cache tests: files by path with an optional ETag (answering
    If-None-Match with 304), a delay before answering, and every request recorded."""

    def __init__(self):
        self.files: dict[str, tuple[bytes, str | None]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.delay = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("If-None-Match")))
                time.sleep(outer.delay)
                body, etag = outer.files[self.path.split("?")[0]]
                if etag is not None and self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                if etag is not None:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def gets(self, path: str) -> list[str | None]:
        return [etag for requested, etag in self.requests if requested.split("?")[0] == path]


@pytest.fixture
def counting():
    server = CountingServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def cache_files(tmp_path) -> list[str]:
    """The cache's entries and notes (lock files and the jobs' link folder left out)."""
    return sorted(p.name for p in (tmp_path / "cache").iterdir() if p.suffix in (".safetensors", ".json", ".part"))


# ---- the folder -----------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "loras"
    (root / "motion").mkdir(parents=True)
    (root / "style.safetensors").write_bytes(lora_bytes(tmp_path, 1))
    (root / "motion" / "pan.safetensors").write_bytes(lora_bytes(tmp_path, 2))
    return root


def test_a_folder_name_gives_the_file_and_its_hash(tmp_path, folder):
    store = store_for(tmp_path, folder)
    found, data = fetch_one(store, "style.safetensors")
    assert data == (folder / "style.safetensors").read_bytes() and not found.downloaded
    assert found.sha256 == hashlib.sha256(data).hexdigest() and found.size == len(data)
    assert found.shown == "style.safetensors"
    assert fetch_one(store, "motion/pan.safetensors")[0].path == (folder / "motion" / "pan.safetensors").resolve()
    (folder / "inner.safetensors").symlink_to(folder / "style.safetensors")  # a link that stays inside is fine
    assert fetch_one(store, "inner.safetensors")[0].sha256 == found.sha256
    assert not (tmp_path / "cache").exists()  # folder files need no cache


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../secret.safetensors", "no absolute path, no '..'"),
        ("motion/../../secret.safetensors", "no absolute path, no '..'"),
        ("/etc/passwd", "no absolute path, no '..'"),
        ("style.bin", "only .safetensors files are loaded"),
        ("style.safetensors.pt", "only .safetensors files are loaded"),
        ("sty\\le.safetensors", "backslash or a control character"),
        ("style\n.safetensors", "backslash or a control character"),
        ("out.safetensors", "leads out of the LoRA folder"),
        ("motion", "only .safetensors files are loaded"),
        ("file:///etc/passwd.safetensors", "'file' sources are not allowed"),
        ("s3://bucket/x.safetensors", "'s3' sources are not allowed"),
    ],
)
def test_path_tricks_are_refused(tmp_path, folder, name, message):
    (tmp_path / "secret.safetensors").write_bytes(lora_bytes(tmp_path, 3))
    (folder / "out.safetensors").symlink_to(tmp_path / "secret.safetensors")
    with pytest.raises(InputError, match="^loras\\[0\\]\\.high: ") as refused:
        fetch_one(store_for(tmp_path, folder), name)
    assert message in str(refused.value)


def test_a_missing_name_lists_what_the_folder_has(tmp_path, folder):
    with pytest.raises(InputError, match=r"'nope.safetensors' is not in the LoRA folder; it has: "):
        fetch_one(store_for(tmp_path, folder), "nope.safetensors")
    with pytest.raises(InputError, match=r"it has: motion/pan.safetensors, style.safetensors$"):
        fetch_one(store_for(tmp_path, folder), "nope.safetensors")


def test_a_worker_without_a_folder_says_how_to_get_one(tmp_path):
    for store in (store_for(tmp_path, None), store_for(tmp_path, tmp_path / "absent")):
        with pytest.raises(InputError, match="this worker has no LoRA folder.*WAN_LORA_DIR.*URL works instead"):
            fetch_one(store, "style.safetensors")


def test_a_pickle_or_a_damaged_file_in_the_folder_is_refused_before_loading(tmp_path, folder):
    torch.save({"x": torch.zeros(2)}, folder / "evil.safetensors")  # a pickle wearing a .safetensors name
    (folder / "plain-pickle.safetensors").write_bytes(pickle.dumps({"x": 1}))
    good = (folder / "style.safetensors").read_bytes()
    (folder / "short.safetensors").write_bytes(good[:-10])
    (folder / "padded.safetensors").write_bytes(good + b"\0" * 16)
    expected = {
        "evil.safetensors": "not a safetensors file",
        "plain-pickle.safetensors": "not a safetensors file",
        "short.safetensors": "truncated: tensor",
        "padded.safetensors": "16 bytes after the last tensor",
    }
    for name, message in expected.items():
        with pytest.raises(InputError, match=f"^loras\\[0\\]\\.high \\({name}\\): .*{message}"):
            fetch_one(store_for(tmp_path, folder), name)


def test_the_layout_check_reads_headers_not_tensors(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(lora_bytes(tmp_path))
    check_safetensors(path, "x")
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    lying = data[:8] + data[8 : 8 + length].replace(b'"F32"', b'"F16"', 1) + data[8 + length :]
    path.write_bytes(lying)  # one tensor now claims half the bytes it occupies
    with pytest.raises(InputError, match="does not fill its"):
        check_safetensors(path, "x")
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(InputError, match="no safetensors header"):
        check_safetensors(path, "x")


def test_urls_are_told_apart_from_names():
    assert is_url("https://h.example/a.safetensors") and is_url("HTTP://h.example/a.safetensors")
    assert not is_url("style.safetensors") and not is_url("http:style.safetensors")


# ---- URLs and the cache ---------------------------------------------------------------------------------


def test_a_url_is_downloaded_once_then_served_from_the_cache(tmp_path, counting):
    body = lora_bytes(tmp_path)
    counting.files["/a.safetensors"] = (body, None)
    store = store_for(tmp_path)
    first, data = fetch_one(store, f"{counting.url}/a.safetensors?token=secret")
    assert data == body and first.downloaded and first.sha256 == hashlib.sha256(body).hexdigest()
    assert first.shown == f"{counting.url}/a.safetensors"  # never the query string
    second, data = fetch_one(store, f"{counting.url}/a.safetensors?token=secret")
    assert data == body and not second.downloaded and second.sha256 == first.sha256
    assert counting.gets("/a.safetensors") == [None]  # no ETag: the cached copy is used without asking
    assert not first.path.exists()  # the job's link is gone with its checkout; the entry stays
    assert len(cache_files(tmp_path)) == 2


def test_an_etag_is_revalidated_and_a_changed_file_downloaded_again(tmp_path, counting):
    old, new = lora_bytes(tmp_path, 1), lora_bytes(tmp_path, 2)
    counting.files["/e.safetensors"] = (old, '"v1"')
    store = store_for(tmp_path)
    assert fetch_one(store, f"{counting.url}/e.safetensors")[1] == old
    hit, data = fetch_one(store, f"{counting.url}/e.safetensors")
    assert data == old and not hit.downloaded
    counting.files["/e.safetensors"] = (new, '"v2"')
    changed, data = fetch_one(store, f"{counting.url}/e.safetensors")
    assert data == new and changed.downloaded and changed.sha256 == hashlib.sha256(new).hexdigest()
    assert counting.gets("/e.safetensors") == [None, '"v1"', '"v1"']


def test_caps_deadlines_and_refused_redirects(tmp_path, http_server):
    body = lora_bytes(tmp_path)
    routes, Route = http_server.routes, http_server.Route
    routes["/big.safetensors"] = Route(body=body + b"\0" * 5000)
    routes["/big-unsized.safetensors"] = Route(body=body + b"\0" * 5000, length=False)
    routes["/slow.safetensors"] = Route(body=body, trickle=0.02)
    routes["/missing.safetensors"] = Route(status=404)
    routes["/ok.safetensors"] = Route(body=body)
    store = LoraStore(
        None, tmp_path / "cache", 10**6, len(body) + 100, UrlPolicy.from_allow_list("localhost"), total_timeout_s=1.0
    )
    local = http_server.url.replace("127.0.0.1", "localhost")
    routes["/hop.safetensors"] = Route(status=302, headers={"Location": f"{http_server.url}/ok.safetensors"})
    cases = {
        "/big.safetensors": f"{local}/big.safetensors is {len(body) + 5000} bytes; LoRA files may be at most",
        "/big-unsized.safetensors": "is larger than allowed; LoRA files may be at most",
        "/slow.safetensors": "took over 1 s",
        "/missing.safetensors": "failed with HTTP 404",
        "/hop.safetensors": "refused: 127.0.0.1 is a loopback address",
    }
    for path, message in cases.items():
        started = time.monotonic()
        with pytest.raises(InputError, match="^loras\\[0\\]\\.high: ") as refused:
            fetch_one(store, f"{local}{path}")
        assert message in str(refused.value) and time.monotonic() - started < 5
    assert cache_files(tmp_path) == []  # nothing half-written kept
    assert fetch_one(store, f"{local}/ok.safetensors")[1] == body
    unguarded = LoraStore(None, tmp_path / "c2", 10**6, 10**6, UrlPolicy())  # the default: public addresses only
    with pytest.raises(InputError, match="localhost resolves to 127.0.0.1, which is a loopback address"):
        fetch_one(unguarded, f"{local}/ok.safetensors")


def test_a_corrupt_download_is_never_kept(tmp_path, http_server):
    body = lora_bytes(tmp_path)
    http_server.routes["/cut.safetensors"] = http_server.Route(body=body[:-32])
    torch.save({"x": torch.zeros(2)}, tmp_path / "p.pt")
    http_server.routes["/pickle.safetensors"] = http_server.Route(body=(tmp_path / "p.pt").read_bytes())
    store = store_for(tmp_path)
    for name, message in (("cut", "truncated"), ("pickle", "not a safetensors file")):
        url = f"{http_server.url}/{name}.safetensors"
        with pytest.raises(InputError, match=f"^loras\\[0\\]\\.high \\({url}\\): {message}"):
            fetch_one(store, url)
    assert cache_files(tmp_path) == []
    http_server.routes["/cut.safetensors"] = http_server.Route(body=body)  # repaired at the source
    assert fetch_one(store, f"{http_server.url}/cut.safetensors")[1] == body


def test_the_cache_keeps_to_its_bound_least_recently_used_first(tmp_path, counting):
    bodies = {name: lora_bytes(tmp_path, seed) for seed, name in enumerate("abc")}
    for name, body in bodies.items():
        counting.files[f"/{name}.safetensors"] = (body, None)
    size = len(bodies["a"])
    store = store_for(tmp_path, cache_bytes=2 * size + 10)
    for name in ("a", "b", "a", "c"):  # b is the least recently used when c arrives
        fetch_one(store, f"{counting.url}/{name}.safetensors")
        time.sleep(0.01)
    kept = sorted(p.read_bytes() for p in (tmp_path / "cache").glob("*.safetensors"))
    assert kept == sorted([bodies["a"], bodies["c"]])
    fetch_one(store, f"{counting.url}/b.safetensors")
    assert counting.gets("/b.safetensors") == [None, None] and counting.gets("/a.safetensors") == [None]


def test_a_file_bigger_than_the_whole_cache_serves_its_job_and_is_not_kept(tmp_path, counting):
    body = lora_bytes(tmp_path, rows=64)
    counting.files["/huge.safetensors"] = (body, None)
    store = store_for(tmp_path, cache_bytes=len(body) // 2)
    found, data = fetch_one(store, f"{counting.url}/huge.safetensors")
    assert data == body and found.downloaded
    assert cache_files(tmp_path) == []


def test_a_files_path_stays_readable_while_another_job_evicts_its_entry(tmp_path, counting):
    first, second = lora_bytes(tmp_path, 1), lora_bytes(tmp_path, 2)
    counting.files["/1.safetensors"] = (first, None)
    counting.files["/2.safetensors"] = (second, None)
    store = store_for(tmp_path, cache_bytes=len(first) + 10)
    with store.checkout() as fetch:
        held = fetch("loras[0].high", f"{counting.url}/1.safetensors")
        fetch_one(store, f"{counting.url}/2.safetensors")  # another job: the cache holds one, 1 is evicted
        assert not any(p.read_bytes() == first for p in (tmp_path / "cache").glob("*.safetensors"))
        assert held.path.read_bytes() == first


def test_concurrent_jobs_asking_for_one_url_download_it_once(tmp_path, counting):
    body = lora_bytes(tmp_path)
    counting.files["/shared.safetensors"] = (body, None)
    counting.delay = 0.5
    store = store_for(tmp_path)
    results = []

    def job():
        results.append(fetch_one(store, f"{counting.url}/shared.safetensors"))

    threads = [threading.Thread(target=job) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(counting.gets("/shared.safetensors")) == 1
    assert [data for _, data in results] == [body] * 3
    assert sorted(found.downloaded for found, _ in results) == [False, False, True]


def test_what_a_killed_worker_left_is_swept_and_a_fresh_download_is_not(tmp_path, counting):
    import os

    counting.files["/a.safetensors"] = (lora_bytes(tmp_path), None)
    store = store_for(tmp_path, total_timeout_s=5.0)
    fetch_one(store, f"{counting.url}/a.safetensors")  # creates the cache
    cache = tmp_path / "cache"
    stale_part, live_part = cache / "download-old.part", cache / "download-live.part"
    stale_job = cache / "in-use" / "job-old"
    for path in (stale_part, live_part):
        path.write_bytes(b"partial")
    stale_job.mkdir()
    (stale_job / "0.safetensors").write_bytes(b"x")
    os.utime(stale_part, (time.time() - 120, time.time() - 120))  # idle longer than a download may take
    os.utime(stale_job, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    counting.files["/b.safetensors"] = (lora_bytes(tmp_path, 5), None)
    fetch_one(store, f"{counting.url}/b.safetensors")  # a download sweeps after storing
    assert not stale_part.exists() and not stale_job.exists() and live_part.exists()


def test_a_cache_folder_that_cannot_be_written_is_named_for_the_operator(tmp_path, counting):
    from wan_i2v.errors import JobError

    counting.files["/a.safetensors"] = (lora_bytes(tmp_path), None)
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    with pytest.raises(JobError, match=r"^loras\[0\]\.high: the LoRA download cache .*cache cannot be used") as failed:
        fetch_one(store_for(tmp_path), f"{counting.url}/a.safetensors")
    assert "WAN_LORA_CACHE_DIR" in str(failed.value) and not isinstance(failed.value, InputError)
