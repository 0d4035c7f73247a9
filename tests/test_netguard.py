"""Image URLs: the address guard (SSRF), redirects, timeouts and the byte cap.

Traffic stays on loopback: names that stand for private or metadata addresses resolve through a
stubbed resolver, and any attempt to open a socket to a non-loopback address fails the test.
"""

import gzip
import ipaddress
import socket
import time

import pytest
from helpers import encode, picture

from wan_i2v.errors import InputError, SettingsError
from wan_i2v.worker import images, netguard
from wan_i2v.worker.images import load_image
from wan_i2v.worker.netguard import UrlPolicy
from wan_i2v.worker.settings import Settings

PNG = encode(picture(), "PNG")
LOOPBACK_ALLOWED = UrlPolicy.from_allow_list("127.0.0.1")

# What hostile names resolve to, through the stubbed resolver.
ZONE = {
    "intranet.example": ["10.1.2.3"],
    "router.example": ["192.168.0.1"],
    "metadata.example": ["169.254.169.254"],
    "metadata6.example": ["fd00:ec2::254"],
    "alibaba-metadata.example": ["100.100.100.200"],
    "cgnat.example": ["100.64.0.7"],
    "localhost6.example": ["::1"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "multicast.example": ["224.0.0.251"],
    "zero.example": ["0.0.0.0"],
    "rebind.example": ["93.184.215.14", "127.0.0.1"],  # one public answer and one loopback answer
    "public.example": ["93.184.215.14"],
}


def stub_resolver(host, port):
    if host not in ZONE:  # as getaddrinfo answers for a name with no address
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return ZONE[host]


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail the test if anything tries to connect outside loopback."""
    real = netguard.urllib3_connection.create_connection
    attempts = []

    def guarded(address, *args, **kwargs):
        attempts.append(address[0])
        assert address[0] in ("127.0.0.1", "::1"), f"a connection to {address} was attempted"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(netguard.urllib3_connection, "create_connection", guarded)
    return attempts


def test_url_fetch_works_and_the_type_comes_from_decoding(http_server):
    http_server.routes["/pic.webp"] = http_server.Route(
        body=encode(picture(), "WEBP"), headers={"Content-Type": "text/html"}
    )
    assert load_image("image", http_server.url + "/pic.webp?sig=secret", LOOPBACK_ALLOWED).size == (208, 120)
    http_server.routes["/photo.png"] = http_server.Route(
        body=b"<html>not an image</html>", headers={"Content-Type": "image/png"}
    )
    with pytest.raises(InputError, match=r"^image: not a readable image; allowed formats: JPEG, PNG, WebP, GIF"):
        load_image("image", http_server.url + "/photo.png", LOOPBACK_ALLOWED)


def test_loopback_is_refused_by_default_before_any_request(http_server, loopback_only):
    http_server.routes["/pic.png"] = http_server.Route(body=PNG)
    with pytest.raises(InputError, match=r"^image: http://127.0.0.1:\d+/pic.png refused: 127.0.0.1 is a loopback"):
        load_image("image", http_server.url + "/pic.png?token=abc")
    assert http_server.hits == [] and loopback_only == []


@pytest.mark.parametrize(
    "host, reason",
    [
        ("intranet.example", "private"),
        ("router.example", "private"),
        ("metadata.example", "cloud metadata"),
        ("metadata6.example", "cloud metadata"),
        ("alibaba-metadata.example", "cloud metadata"),
        ("cgnat.example", "not a public address"),
        ("localhost6.example", "loopback"),
        ("mapped.example", "loopback"),
        ("multicast.example", "multicast"),
        ("zero.example", "unspecified"),
        ("rebind.example", "loopback"),
    ],
)
def test_names_resolving_to_internal_addresses_are_refused(host, reason, loopback_only):
    policy = UrlPolicy().with_resolver(stub_resolver)
    with pytest.raises(InputError) as caught:
        load_image("last_image", f"http://{host}/img.png", policy)
    message = str(caught.value)
    assert message.startswith(f"last_image: http://{host}/img.png refused: {host} resolves to ") and reason in message
    assert loopback_only == [], "a socket was opened"


@pytest.mark.parametrize("literal", ["http://10.0.0.1/a.png", "http://[::1]/a.png", "http://169.254.169.254/x"])
def test_address_literals_are_checked_too(literal, loopback_only):
    with pytest.raises(InputError, match="refused: .* address"):
        load_image("image", literal)
    assert loopback_only == []


def test_public_addresses_pass_the_check_without_connecting():
    policy = UrlPolicy().with_resolver(stub_resolver)
    assert [str(a) for a in policy.addresses("public.example", 443)] == ["93.184.215.14"]


def test_every_redirect_is_checked(http_server, loopback_only):
    policy = LOOPBACK_ALLOWED.with_resolver(stub_resolver)
    http_server.routes["/to-metadata"] = http_server.Route(
        status=302, headers={"Location": "http://metadata.example/latest/meta-data/iam/security-credentials/"}
    )
    http_server.routes["/to-other-loopback"] = http_server.Route(status=301, headers={"Location": "http://127.0.0.2/x"})
    http_server.routes["/to-file"] = http_server.Route(status=302, headers={"Location": "file:///etc/passwd"})
    with pytest.raises(InputError, match=r"refused: metadata.example resolves to 169.254.169.254, which is a cloud"):
        load_image("image", http_server.url + "/to-metadata", policy)
    with pytest.raises(InputError, match=r"refused: 127.0.0.2 is a loopback address"):
        load_image("image", http_server.url + "/to-other-loopback", policy)
    with pytest.raises(InputError, match=r"redirects to a URL that is not http or https"):
        load_image("image", http_server.url + "/to-file", policy)
    assert set(loopback_only) == {"127.0.0.1"}


def test_redirects_are_limited_to_three(http_server):
    for hop in range(5):
        http_server.routes[f"/r{hop}"] = http_server.Route(status=302, headers={"Location": f"/r{hop + 1}"})
    http_server.routes["/r5"] = http_server.Route(body=PNG)
    with pytest.raises(InputError, match=r"redirects more than 3 times"):
        load_image("image", http_server.url + "/r0", LOOPBACK_ALLOWED)
    assert load_image("image", http_server.url + "/r2", LOOPBACK_ALLOWED).size == (208, 120)  # 3 redirects


def test_allow_list_by_host_name_and_network(http_server):
    http_server.routes["/pic.png"] = http_server.Route(body=PNG)
    port = http_server.server_address[1]
    assert load_image("image", f"http://localhost:{port}/pic.png", UrlPolicy.from_allow_list("localhost")).size
    assert load_image("image", http_server.url + "/pic.png", UrlPolicy.from_allow_list("127.0.0.0/8, ::1")).size
    with pytest.raises(InputError, match="loopback"):
        load_image("image", http_server.url + "/pic.png", UrlPolicy.from_allow_list("10.0.0.0/8"))


def test_allow_list_setting_is_parsed_and_checked():
    settings = Settings.from_env({"WAN_URL_ALLOW": "minio.internal, 10.0.0.0/8,192.168.1.5"})
    assert settings.url_policy.allow_hosts == {"minio.internal"}
    assert [str(n) for n in settings.url_policy.allow_networks] == ["10.0.0.0/8", "192.168.1.5/32"]
    assert Settings.from_env({}).url_policy == UrlPolicy()
    with pytest.raises(SettingsError, match=r"WAN_URL_ALLOW: 'http://x/' is neither a host name"):
        Settings.from_env({"WAN_URL_ALLOW": "http://x/"})


def test_errors_name_the_field_and_hide_the_query(http_server):
    with pytest.raises(InputError) as caught:
        load_image("last_image", http_server.url + "/missing.png?X-Amz-Signature=topsecret", LOOPBACK_ALLOWED)
    message = str(caught.value)
    assert message.startswith("last_image: downloading http://127.0.0.1:") and "HTTP 404" in message
    assert "topsecret" not in message


def test_declared_and_streamed_bodies_over_the_cap_are_aborted(http_server, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 10_000)
    http_server.routes["/big.png"] = http_server.Route(body=b"\0" * 50_000)
    http_server.routes["/undeclared.png"] = http_server.Route(body=b"\0" * 50_000, length=False)
    with pytest.raises(InputError, match=r"^image: .*/big.png is 50000 bytes; images may be at most"):
        load_image("image", http_server.url + "/big.png", LOOPBACK_ALLOWED)
    with pytest.raises(InputError, match=r"^image: .*/undeclared.png is larger than allowed; images may be at most"):
        load_image("image", http_server.url + "/undeclared.png", LOOPBACK_ALLOWED)


def test_a_compressed_body_is_capped_by_its_decoded_size(http_server):
    bomb = gzip.compress(b"\0" * (images.MAX_IMAGE_BYTES * 4))  # 40 MB of zeros in about 40 KB
    assert len(bomb) < 100_000
    http_server.routes["/bomb.png"] = http_server.Route(body=bomb, headers={"Content-Encoding": "gzip"})
    with pytest.raises(InputError, match=r"is larger than allowed"):
        load_image("image", http_server.url + "/bomb.png", LOOPBACK_ALLOWED)


def test_a_url_that_hangs_times_out(http_server):
    policy = UrlPolicy.from_allow_list("127.0.0.1", read_timeout_s=0.5)
    http_server.routes["/hang.png"] = http_server.Route(body=PNG, stall=5)
    http_server.routes["/slow-body.png"] = http_server.Route(body=PNG, delay=5)
    for path in ("/hang.png", "/slow-body.png"):
        started = time.monotonic()
        with pytest.raises(InputError, match=rf"^image: .*{path} did not answer in time \(connect 5 s, read 0.5 s\)"):
            load_image("image", http_server.url + path, policy)
        assert time.monotonic() - started < 3


def test_a_trickling_server_meets_the_total_deadline(http_server):
    policy = UrlPolicy.from_allow_list("127.0.0.1", read_timeout_s=5, total_timeout_s=1)
    http_server.routes["/trickle.png"] = http_server.Route(body=PNG, trickle=0.05)  # would take minutes
    started = time.monotonic()
    with pytest.raises(InputError, match=r"^image: .*/trickle.png took over 1 s"):
        load_image("image", http_server.url + "/trickle.png", policy)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    "endpoint, message",
    [
        ("http://169.254.169.254/", "endpointUrl refused: 169.254.169.254 is a cloud metadata address"),
        ("http://127.0.0.1:9000", "endpointUrl refused: 127.0.0.1 is a loopback address"),
        ("http://intranet.example", "endpointUrl refused: intranet.example resolves to 10.1.2.3"),
        ("file:///tmp/bucket", "endpointUrl must be an http(s) URL"),
        ("https://nowhere.example", "endpointUrl host nowhere.example does not resolve"),
        ("https://s3.example:99999", "endpointUrl port must be a number from 0 to 65535"),
    ],
)
def test_a_jobs_s3config_endpoint_follows_the_same_address_rules(engine, endpoint, message, loopback_only):
    from wan_i2v.worker.job import Worker

    worker = Worker(engine, Settings(model="tiny", url_policy=UrlPolicy().with_resolver(stub_resolver)))
    s3 = {"accessId": "a", "accessSecret": "b", "bucketName": "c", "endpointUrl": endpoint}
    result = worker.handle({"id": "s3", "input": {"image": "x"}, "s3Config": s3})
    assert result["error"].startswith("s3Config: " + message), result
    assert loopback_only == []


@pytest.mark.parametrize(
    "address, reason",
    [
        ("0.0.0.0", "an unspecified address"),
        ("127.0.0.1", "a loopback address"),
        ("fe80::1", "a link-local address"),
        ("10.0.0.1", "a private address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("93.184.215.14", None),
    ],
)
def test_refusals_read_as_english(address, reason):
    assert netguard.refusal(ipaddress.ip_address(address)) == reason
