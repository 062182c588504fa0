"""Endpoint verification on Create and Update: a signed ping over the deliveries' HTTP client
(its TLS checks, SSRF guard and rules) must get a 2xx, or nothing is stored or changed."""

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from standardwebhooks.webhooks import Webhook

from tests.pipeline_support import Receiver, Reply
from tests.pki import cert, key_pem, pem
from tests.support import Api, expect_error
from webhooks.v1 import webhook_service_pb2 as pb

FAILED = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """HTTPS receivers: one trusted through the CA file, one self-signed, one expired, one
    for another host name."""
    ca = cert("test-ca", None, ca=True)
    (tmp_path / "ca.pem").write_bytes(pem(ca[0]))
    made = {
        "trusted": cert("localhost", ca),
        "self_signed": cert("localhost", None),
        "expired": cert("localhost", ca, expired=True),
        "wrong_host": cert("other.example", ca, hosts=("other.example",)),
    }
    receivers = {}
    for name, (certificate, key) in made.items():
        (tmp_path / f"{name}.pem").write_bytes(pem(certificate))
        (tmp_path / f"{name}.key").write_bytes(key_pem(key))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
        receivers[name] = Receiver(ssl_context=context).start()
    yield {"ca_file": str(tmp_path / "ca.pem"), **receivers}
    for receiver in receivers.values():
        receiver.stop()


def _create(api: Api, url: str, verify: bool = True, name: str = "checked") -> Any:
    request = pb.CreateSubscriptionRequest(
        subscription=pb.Subscription(name=name, url=url), verify_endpoint=verify
    )
    return api.call("CreateSubscription", request)


def _refused(api: Api, url: str) -> dict[str, Any]:
    details = expect_error(FAILED, _create, api, url)
    assert details["reason"] == "ENDPOINT_VERIFICATION_FAILED"
    assert details["metadata"]["field"] == "subscription.url"
    assert api.call("ListSubscriptions", pb.ListSubscriptionsRequest()).total_size == 0
    return details


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_create_pings_the_endpoint_signed_with_the_new_secret(
    make_server: Any, tls: dict[str, Any]
) -> None:
    api = make_server(WEBHOOKS_ALLOW_HTTP="false", WEBHOOKS_DELIVERY_CA_FILE=tls["ca_file"])
    receiver: Receiver = tls["trusted"]
    created = _create(api, receiver.url("/hook"), name="crm-sync")
    [ping] = receiver.at("/hook")
    # The signature is the Standard Webhooks one, with the secret the answer returns.
    payload = Webhook(created.secret).verify(ping.body, ping.headers)
    assert payload["type"] == "webhook.ping"
    assert payload["tenant"] == "acme" and payload["data"] == {"subscription_name": "crm-sync"}
    assert ping.headers["webhook-id"].startswith("msg_")
    # Without the flag (and without the operator's setting) nothing is sent.
    _create(api, receiver.url("/quiet"), verify=False, name="quiet")
    assert receiver.at("/quiet") == []


@pytest.mark.parametrize("case", ["self_signed", "expired", "wrong_host"])
def test_a_certificate_the_deliveries_would_refuse_refuses_the_create(
    make_server: Any, tls: dict[str, Any], case: str
) -> None:
    api = make_server(WEBHOOKS_ALLOW_HTTP="false", WEBHOOKS_DELIVERY_CA_FILE=tls["ca_file"])
    details = _refused(api, tls[case].url("/hook"))
    assert details["metadata"]["cause"] == "TLS"
    assert "TLS certificate validation failed" in details["message"]
    assert tls[case].at("/hook") == []  # the handshake failed: no request arrived


@pytest.mark.parametrize(
    ("reply", "cause", "words"),
    [
        (Reply(500), "HTTP_STATUS", "answered HTTP 500"),
        (Reply(302, headers={"location": "https://example.com/"}), "HTTP_STATUS", "redirects"),
        (Reply(404), "HTTP_STATUS", "answered HTTP 404"),
        (Reply(delay=3.0), "TIMEOUT", "no answer within 0.5 s"),
    ],
)
def test_an_endpoint_that_does_not_answer_2xx_in_time_refuses_the_create(
    make_server: Any, receiver: Receiver, reply: Reply, cause: str, words: str
) -> None:
    api = make_server(WEBHOOKS_ALLOW_HTTP="true", WEBHOOKS_VERIFY_TIMEOUT_SECONDS="0.5")
    details = _refused(api, receiver.reply("/hook", reply))
    assert details["metadata"]["cause"] == cause
    assert words in details["message"]
    if reply.status != 200:
        assert details["metadata"]["http_status"] == str(reply.status)


def test_unreachable_endpoints_say_why(make_server: Any) -> None:
    api = make_server(WEBHOOKS_ALLOW_HTTP="true")
    connect = _refused(api, f"http://127.0.0.1:{_closed_port()}/hook")
    assert connect["metadata"]["cause"] == "CONNECT"
    dns = _refused(api, "https://no-such-host.invalid/hook")
    assert dns["metadata"]["cause"] == "DNS"


def test_a_non_public_host_is_refused_before_any_ping(make_server: Any, receiver: Receiver) -> None:
    # Without 127.0.0.0/8 allowed, the URL check refuses it: no request leaves. (A name that
    # resolves elsewhere later meets the deliveries' connect-time guard, the same code.)
    api = make_server(WEBHOOKS_ALLOW_HTTP="true", WEBHOOKS_SSRF_ALLOW_CIDRS="")
    url = receiver.url("/hook").replace("127.0.0.1", "localhost")
    details = expect_error(grpc.StatusCode.INVALID_ARGUMENT, _create, api, url)
    assert "subscription.url" in details["violations"]
    assert receiver.at("/hook") == []


def test_update_verifies_a_new_url_and_changes_nothing_when_it_fails(
    make_server: Any, receiver: Receiver
) -> None:
    api = make_server(WEBHOOKS_ALLOW_HTTP="true")
    created = _create(api, receiver.url("/old"))
    sub = created.subscription

    def update(url: str, verify: bool) -> Any:
        request = pb.UpdateSubscriptionRequest(
            subscription=pb.Subscription(id=sub.id, url=url), verify_endpoint=verify
        )
        request.update_mask.paths.append("url")
        return api.call("UpdateSubscription", request)

    details = expect_error(FAILED, update, receiver.reply("/broken", Reply(503)), True)
    assert details["reason"] == "ENDPOINT_VERIFICATION_FAILED"
    kept = api.call("GetSubscription", pb.GetSubscriptionRequest(id=sub.id)).subscription
    assert kept.url == sub.url and kept.update_time == sub.update_time
    # A working endpoint: the ping is signed with the subscription's current secret.
    moved = update(receiver.url("/new"), True).subscription
    assert moved.url.endswith("/new")
    [ping] = receiver.at("/new")
    assert Webhook(created.secret).verify(ping.body, ping.headers)["type"] == "webhook.ping"
    # Asked for without a URL change, it pings the URL there is.
    request = pb.UpdateSubscriptionRequest(
        subscription=pb.Subscription(id=sub.id, description="still there?"), verify_endpoint=True
    )
    request.update_mask.paths.append("description")
    api.call("UpdateSubscription", request)
    assert len(receiver.at("/new")) == 2


def test_the_operator_can_make_verification_mandatory(make_server: Any, receiver: Receiver) -> None:
    api = make_server(WEBHOOKS_ALLOW_HTTP="true", WEBHOOKS_VERIFY_ENDPOINTS="true")
    _refused(api, receiver.reply("/down", Reply(500)))
    sub = _create(api, receiver.url("/up"), verify=False).subscription
    assert len(receiver.at("/up")) == 1  # pinged though the request did not ask

    def update(path: str, **fields: Any) -> Any:
        request = pb.UpdateSubscriptionRequest(subscription=pb.Subscription(id=sub.id, **fields))
        request.update_mask.paths.append(path)
        return api.call("UpdateSubscription", request)

    update("description", description="no new URL: no ping")
    assert len(receiver.at("/up")) == 1
    details = expect_error(FAILED, update, "url", url=receiver.reply("/gone", Reply(410)))
    assert details["metadata"]["http_status"] == "410"
