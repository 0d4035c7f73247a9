# ruff: noqa: F811 (the counting and folder fixtures are imported from test_lora_files)
"""The per-job LoRA download and cache against hostile input: a server that trickles its headers, a cache
that outlives a change of address rules, malformed URLs, host names and files, odd LoRA tensors, and the
cache's own leftovers (lock files, .part files, notes that do not match their file). Small files and
loopback servers only: no model, no job; each test well under two seconds."""

import fcntl
import hashlib
import json
import os
import socket
import threading
import time

import pytest
import torch
from test_lora_files import LOOPBACK, CountingServer, cache_files, counting, fetch_one, folder, lora_bytes, store_for  # noqa: F401 (fixtures shared with the cache's own tests)

from wan_i2v.errors import InputError, JobError
from wan_i2v.worker.images import fetch_url
from wan_i2v.worker.lora import LoraError, parse_lora
from wan_i2v.worker.lora_files import LoraStore, check_safetensors
from wan_i2v.worker.netguard import UrlPolicy

FIELD = r"^loras\[0\]\.high"


def key_of(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


@pytest.fixture
def trickler():
    """A loopback server that answers every request with its status line and then an endless header, one
    byte every 50 ms: each read gets a byte well within any read timeout. It gives up after 5 s, so that a
    client without a total deadline fails the test instead of hanging it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            head, ends = b"HTTP/1.1 200 OK\r\nX-Slow: ", time.monotonic() + 5
            for index in range(10**6):
                if stop.is_set() or time.monotonic() > ends:
                    return
                try:
                    conn.sendall(head[index : index + 1] or b"a")
                except OSError:  # the client hung up
                    return
                time.sleep(0.05)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # the accept timeout, or the listener closed
                continue
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


# ---- 1. deadlines: the total download deadline covers the headers; a lock wait ends ------------------------


def test_a_server_trickling_its_status_line_and_headers_is_cut_off_at_the_total_deadline(tmp_path, trickler):
    store = store_for(tmp_path, total_timeout_s=0.3, read_timeout_s=1.0)  # a byte every 50 ms: no read timeout
    url = f"{trickler}/t.safetensors"
    started = time.monotonic()
    with pytest.raises(InputError, match=f"{FIELD}: downloading {url} took over 0.3 s$"):
        fetch_one(store, url)
    assert time.monotonic() - started < 1.0  # the server would go on for 5 s
    assert cache_files(tmp_path) == []
    started = time.monotonic()  # the image download goes through the same code
    with pytest.raises(InputError, match=r"^image: downloading .*/t.png took over 0.3 s$"):
        fetch_url(
            "image",
            f"{trickler}/t.png",
            UrlPolicy.from_allow_list("127.0.0.1", read_timeout_s=1.0, total_timeout_s=0.3),
        )
    assert time.monotonic() - started < 1.0  # the server would go on for 5 s


def test_waiting_for_another_jobs_download_of_the_same_url_is_bounded(tmp_path, counting):
    counting.files["/a.safetensors"] = (lora_bytes(tmp_path), None)
    url = f"{counting.url}/a.safetensors"
    store = LoraStore(None, tmp_path / "cache", 10**6, 10**6, LOOPBACK, lock_wait_s=0.3)
    (tmp_path / "cache").mkdir()
    with open(tmp_path / "cache" / f"{key_of(url)}.lock", "a") as held:  # a download stuck in another worker
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(JobError, match=f"{FIELD}: {url} is being downloaded by another job.*over 0.3 s") as busy:
            fetch_one(store, url)
        assert not isinstance(busy.value, InputError) and 0.3 <= time.monotonic() - started < 1.0
    assert fetch_one(store, url)[0].downloaded  # free again: the same store downloads it
    assert counting.gets("/a.safetensors") == [None]


# ---- 2. a cache hit follows today's address rules ------------------------------------------------------


def test_a_cache_hit_is_refused_when_the_address_rules_now_refuse_its_url(tmp_path, counting):
    counting.files["/a.safetensors"] = (lora_bytes(tmp_path), None)
    url = f"{counting.url}/a.safetensors"
    fetch_one(store_for(tmp_path), url)  # cached while 127.0.0.1 was allowed
    strict = LoraStore(None, tmp_path / "cache", 10**6, 10**6, UrlPolicy())  # WAN_URL_ALLOW emptied since
    with pytest.raises(InputError, match=f"{FIELD}: {url} refused: 127.0.0.1 is a loopback address"):
        fetch_one(strict, url)
    assert counting.gets("/a.safetensors") == [None]  # refused before the cache, not by the server


# ---- 3. what used to escape as an internal error ---------------------------------------------------------


def tiny_expert() -> torch.nn.Module:
    attention = torch.nn.Module()
    attention.to_q = torch.nn.Linear(8, 6)
    block = torch.nn.Module()
    block.attn1 = attention
    expert = torch.nn.Module()
    expert.blocks = torch.nn.ModuleList([block])
    return expert


def test_a_rank_zero_pair_or_an_alpha_that_is_not_one_finite_number_is_an_input_error():
    down, up = "transformer.blocks.0.attn1.to_q.lora_A.weight", "transformer.blocks.0.attn1.to_q.lora_B.weight"
    pair = {down: torch.ones(4, 8), up: torch.ones(6, 4)}
    alpha = "transformer.blocks.0.attn1.to_q.alpha"
    assert (
        parse_lora({**pair, alpha: torch.tensor(2.0)}, tiny_expert(), "x").low_rank["blocks.0.attn1.to_q"].scale == 0.5
    )
    cases = [
        ({down: torch.ones(0, 8), up: torch.ones(6, 0), alpha: torch.tensor(8.0)}, "have rank 0"),
        ({down: torch.ones(0, 8), up: torch.ones(6, 0)}, "have rank 0"),
        ({**pair, alpha: torch.ones(2)}, r"alpha has shape \(2,\); it must be a single number"),
        ({**pair, alpha: torch.ones(0)}, r"alpha has shape \(0,\); it must be a single number"),
        ({**pair, alpha: torch.tensor(float("nan"))}, "alpha is nan; it must be a finite number"),
    ]
    for state, message in cases:
        with pytest.raises(LoraError, match=f"^lora.safetensors: blocks.0.attn1.to_q: .*{message}"):
            parse_lora(state, tiny_expert(), "lora.safetensors")


def test_a_deeply_nested_header_is_a_layout_error(tmp_path, folder):
    header = b"[" * 200_000 + b"]" * 200_000
    (folder / "deep.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(InputError, match="not a safetensors file .its JSON header is nested too deeply"):
        check_safetensors(folder / "deep.safetensors", "deep")
    with pytest.raises(InputError, match=rf"{FIELD} \(deep.safetensors\): not a safetensors file"):
        fetch_one(store_for(tmp_path, folder), "deep.safetensors")


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("http://h.example:99999/a.safetensors", "Port out of range"),
        ("http://[zz]/a.safetensors", "does not appear to be an IPv4 or IPv6 address"),
    ],
)
def test_a_url_with_a_bad_port_or_ip_literal_is_an_input_error_naming_the_field(tmp_path, url, detail):
    with pytest.raises(InputError, match=f"{FIELD}: not a valid URL .*{detail}.*; allowed: http") as refused:
        fetch_one(store_for(tmp_path), url)
    assert "port number up to 65535" in str(refused.value)
    with pytest.raises(InputError, match=f"^image: not a valid URL .*{detail}"):
        fetch_url("image", url.replace(".safetensors", ".png"))


@pytest.mark.parametrize("host", ["a" * 64 + ".example", "a..example"])
def test_a_host_name_that_idna_refuses_is_an_input_error(tmp_path, host):
    with pytest.raises(InputError, match=f"^image: http://{host}/x.png refused: {host} is not a valid host name$"):
        fetch_url("image", f"http://{host}/x.png")  # refused inside the connection (the image path)
    with pytest.raises(InputError, match=f"{FIELD}: http://{host}/x.safetensors: host {host} is not a valid host"):
        fetch_one(store_for(tmp_path), f"http://{host}/x.safetensors")  # refused by the check before the cache


def test_a_symlink_loop_or_an_unreadable_name_in_the_folder_is_an_input_error(tmp_path, folder):
    (folder / "loop.safetensors").symlink_to(folder / "loop.safetensors")
    (folder / "a.safetensors").symlink_to(folder / "b.safetensors")
    (folder / "b.safetensors").symlink_to(folder / "a.safetensors")
    long = "x" * 300 + ".safetensors"
    cases = {
        "loop.safetensors": "a symlink loop|Too many levels of symbolic links",
        "a.safetensors": "a symlink loop|Too many levels of symbolic links",
        long: "File name too long",
    }
    for name, reason in cases.items():
        with pytest.raises(InputError, match=rf"{FIELD} \({name}\): cannot be read \(({reason})\); give a readable"):
            fetch_one(store_for(tmp_path, folder), name)
    with pytest.raises(InputError, match="'nope.safetensors' is not in the LoRA folder; it has: motion/pan"):
        fetch_one(store_for(tmp_path, folder), "nope.safetensors")  # the loops are not listed, nor do they fail it


# ---- 4. to 7. the cache's own files ------------------------------------------------------------------------


def test_orphan_lock_files_are_swept_but_held_and_fresh_ones_kept(tmp_path, counting):
    counting.files["/a.safetensors"] = (lora_bytes(tmp_path, 1), None)
    counting.files["/b.safetensors"] = (lora_bytes(tmp_path, 2), None)
    store = store_for(tmp_path, total_timeout_s=1.0)
    fetch_one(store, f"{counting.url}/a.safetensors")  # creates the cache
    cache = tmp_path / "cache"
    orphan, held, fresh = cache / "orphan.lock", cache / "held.lock", cache / "fresh.lock"
    for path in (orphan, held, fresh):
        path.touch()
    old = time.time() - 120  # older than a download may take (1 s + the slack)
    os.utime(orphan, (old, old))
    os.utime(held, (old, old))
    with open(held, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # a stuck download in another worker still holds it
        fetch_one(store, f"{counting.url}/b.safetensors")  # a download sweeps after storing
    assert not orphan.exists() and held.exists() and fresh.exists()
    assert (cache / f"{key_of(counting.url + '/b.safetensors')}.lock").exists()  # just used: fresh
    assert fetch_one(store, f"{counting.url}/a.safetensors")[0].downloaded is False  # the cache still works


def test_a_failed_rename_or_note_leaves_no_part_file(tmp_path, counting):
    counting.files["/a.safetensors"] = (lora_bytes(tmp_path, 1), None)
    counting.files["/b.safetensors"] = (lora_bytes(tmp_path, 2), None)
    cache = tmp_path / "cache"
    a, b = f"{counting.url}/a.safetensors", f"{counting.url}/b.safetensors"
    (cache / f"{key_of(a)}.safetensors").mkdir(parents=True)  # the entry's name is taken: the rename fails
    (cache / f"{key_of(a)}.safetensors" / "x").touch()
    (cache / f"{key_of(b)}.json").mkdir()  # the note's name is taken: the note cannot be written
    store = store_for(tmp_path)
    for url in (a, b):
        with pytest.raises(JobError, match=f"{FIELD}: the LoRA download cache .* cannot be used"):
            fetch_one(store, url)
        assert list(cache.glob("*.part")) == [] and list(cache.glob("*/*.part")) == []


def test_a_cache_note_that_does_not_describe_its_file_is_a_miss(tmp_path, counting):
    body = lora_bytes(tmp_path)
    counting.files["/a.safetensors"] = (body, None)
    url = f"{counting.url}/a.safetensors"
    store = store_for(tmp_path)
    fetch_one(store, url)
    note = tmp_path / "cache" / f"{key_of(url)}.json"
    good = json.loads(note.read_text())
    assert good["size"] == len(body)
    for changed in ({"size": None}, {"size": str(len(body))}, {"size": len(body) + 1}, {"size": True}):
        written = {k: v for k, v in {**good, **changed}.items() if v is not None}
        note.write_text(json.dumps(written))
        found, data = fetch_one(store, url)
        assert found.downloaded and data == body, changed
        assert json.loads(note.read_text()) == good  # rewritten from the download
    assert not fetch_one(store, url)[0].downloaded  # a true note is a hit
    assert len(counting.gets("/a.safetensors")) == 5


def test_the_not_found_listing_stays_inside_the_folder_and_the_cache_is_not_a_lora_folder(tmp_path, folder, counting):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret-name.safetensors").write_bytes(lora_bytes(tmp_path, 4))
    (folder / "ext").symlink_to(outside)  # a symlinked subfolder leading out
    (folder / "alias").symlink_to(folder / "motion")  # one that stays inside is listed
    counting.files["/a.safetensors"] = (lora_bytes(tmp_path, 5), None)
    url = f"{counting.url}/a.safetensors"
    store = LoraStore(folder, folder / "cache", 10**6, 10**6, LOOPBACK)  # a cache inside the LoRA folder
    fetch_one(store, url)
    with pytest.raises(InputError, match="it has: alias/pan.safetensors, motion/pan.safetensors, style.safetensors$"):
        fetch_one(store, "nope.safetensors")
    for name in (f"cache/{key_of(url)}.safetensors", "cache/nothing.safetensors"):
        with pytest.raises(InputError, match=f"{FIELD}: '{name}' is in the worker's LoRA download cache"):
            fetch_one(store, name)
