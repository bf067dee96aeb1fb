"""The outbound-URL policy on its own: every spelling of a private address is seen for what it is,
an allow-list admits exactly its ranges, and the send-time check refuses again (DNS may change
between request and send) before any byte leaves."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from common.outbound import OutboundPolicy, URLRefused

REFUSED = [
    "http://169.254.169.254/", "http://2852039166/", "http://0xA9FEA9FE/", "http://0251.0376.0251.0376/",
    "http://169.254.43518/", "http://[::ffff:169.254.169.254]/", "http://[::169.254.169.254]/",
    "http://[2002:a9fe:a9fe::]/", "http://[64:ff9b::a9fe:a9fe]/", "http://127.0.0.1/", "http://0x7f000001/",
    "http://localhost/", "http://[::1]/", "http://0.0.0.0/", "http://[::]/", "http://10.1.2.3/",
    "http://192.168.0.1/", "http://172.16.0.1/", "http://[fc00::1]/", "http://[fe80::1]/", "http://224.0.0.1/",
    "http://100.64.0.1/", "http://255.255.255.255/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_private_addresses_are_refused_in_every_spelling(url: str) -> None:
    with pytest.raises(URLRefused, match="callbacks.webhook_url"):
        OutboundPolicy().check(url, field="callbacks.webhook_url")


@pytest.mark.parametrize("url", ["ftp://8.8.8.8/", "file:///etc/passwd", "gopher://8.8.8.8/", "http://u:p@8.8.8.8/",
                                 "http:///nohost", "http://8.8.8.8:99999/", "http://no-such-host.invalid/"])
def test_bad_schemes_credentials_and_hosts_are_refused(url: str) -> None:
    with pytest.raises(URLRefused, match="webhook_url"):
        OutboundPolicy().check(url, field="webhook_url")


def test_public_addresses_pass_and_the_allow_list_admits_only_its_ranges() -> None:
    target = OutboundPolicy().check("https://8.8.8.8:8443/x", field="f")
    assert str(target.address) == "8.8.8.8" and target.port == 8443 and target.host_header() == "8.8.8.8:8443"
    loopback = OutboundPolicy([ipaddress.ip_network("127.0.0.0/8")])
    assert str(loopback.check("http://2130706433/", field="f").address) == "127.0.0.1"
    assert loopback.check("http://[::ffff:127.0.0.1]/", field="f").address.version == 6
    with pytest.raises(URLRefused):
        loopback.check("http://169.254.169.254/", field="f")


class _Hook(BaseHTTPRequestHandler):
    hits: list[str]

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self.hits.append(self.headers["Host"])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[int, list[str]]]:
    hits: list[str] = []
    server = HTTPServer(("127.0.0.1", 0), type("H", (_Hook,), {"hits": hits}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port, hits
    server.shutdown()
    server.server_close()


def test_send_time_checks_again_and_pins_the_address(hook: tuple[int, list[str]]) -> None:
    port, hits = hook
    allowed = OutboundPolicy([ipaddress.ip_network("127.0.0.0/8")])
    assert allowed.post_json(f"http://localhost:{port}/h", field="f", body={"a": 1}).status_code == 204
    assert hits == [f"localhost:{port}"]
    with pytest.raises(URLRefused):  # what passed at request time is refused at send time under a stricter policy
        OutboundPolicy().post_json(f"http://localhost:{port}/h", field="f", body={"a": 1})
    assert len(hits) == 1
