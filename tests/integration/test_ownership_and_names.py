"""Proof of ownership with the signing secret, and the scope of a subscription name."""

from typing import Any

import grpc
from google.protobuf import duration_pb2

from tests.support import Api, expect_error
from webhooks.v1 import webhook_service_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _update(api: Api, sub_id: str, proof: str = "", as_: str = "alice", **fields: Any) -> Any:
    request = pb.UpdateSubscriptionRequest(
        subscription=pb.Subscription(id=sub_id, **fields), secret_proof=proof
    )
    request.update_mask.paths.extend(fields)
    return api.call("UpdateSubscription", request, as_=as_)


def _rotate(api: Api, sub_id: str, proof: str = "", as_: str = "alice") -> Any:
    request = pb.RotateSubscriptionSecretRequest(
        id=sub_id, secret_proof=proof, overlap=duration_pb2.Duration(seconds=3600)
    )
    return api.call("RotateSubscriptionSecret", request, as_=as_)


def _delete(api: Api, sub_id: str, proof: str = "", as_: str = "alice") -> Any:
    request = pb.DeleteSubscriptionRequest(id=sub_id, secret_proof=proof)
    return api.call("DeleteSubscription", request, as_=as_)


def test_a_given_proof_must_be_the_current_secret(make_server: Any) -> None:
    api = make_server()
    created = api.create()
    sub_id, secret = created.subscription.id, created.secret
    other = api.create().secret  # a real secret, of another subscription
    for call in (
        lambda proof: _update(api, sub_id, proof, description="x"),
        lambda proof: _rotate(api, sub_id, proof),
        lambda proof: _delete(api, sub_id, proof),
    ):
        for wrong in (other, secret + "x", "whsec_"):
            details = expect_error(INVALID, call, wrong)
            assert details["reason"] == "INVALID_SECRET"
            assert "secret_proof" in details["violations"]
            assert wrong not in str(details)  # never echoed back
    assert _update(api, sub_id, secret, description="proved").subscription.description == "proved"
    # After a rotation only the new secret is current; the old one still signs, but is no
    # longer a proof.
    new = _rotate(api, sub_id, secret).secret
    assert expect_error(INVALID, _update, api, sub_id, secret, description="y")["reason"] == (
        "INVALID_SECRET"
    )
    _update(api, sub_id, new, description="y")
    # The creator rule comes first: bob, not the creator, is refused even with the secret.
    details = expect_error(grpc.StatusCode.PERMISSION_DENIED, _delete, api, sub_id, new, as_="bob")
    assert details["reason"] == "NOT_CREATOR"
    _delete(api, sub_id, new)
    expect_error(
        grpc.StatusCode.NOT_FOUND, api.call, "GetSubscription", pb.GetSubscriptionRequest(id=sub_id)
    )


def test_the_operator_can_require_the_proof_from_non_admin_keys(make_server: Any) -> None:
    api = make_server(WEBHOOKS_REQUIRE_SECRET_PROOF="true")
    created = api.create()
    sub_id, secret = created.subscription.id, created.secret
    for call in (
        lambda: _update(api, sub_id, description="x"),
        lambda: _rotate(api, sub_id),
        lambda: _delete(api, sub_id),
    ):
        details = expect_error(INVALID, call)
        assert details["reason"] == "SECRET_PROOF_REQUIRED"
    assert _update(api, sub_id, secret, description="ok").subscription.description == "ok"
    # An admin manages any subscription of the tenant without it (a wrong one still fails).
    _update(api, sub_id, as_="admin", description="by admin")
    assert expect_error(INVALID, _update, api, sub_id, "whsec_no", as_="admin", description="z")[
        "reason"
    ] == ("INVALID_SECRET")
    _delete(api, sub_id, as_="admin")


def test_names_are_unique_per_tenant_by_default(make_server: Any) -> None:
    api = make_server()
    api.create(name="crm")
    details = expect_error(grpc.StatusCode.ALREADY_EXISTS, api.create, name="crm", as_="bob")
    assert details["reason"] == "NAME_TAKEN"
    renamed = api.create(name="erp", as_="bob").subscription
    details = expect_error(
        grpc.StatusCode.ALREADY_EXISTS, _update, api, renamed.id, as_="bob", name="crm"
    )
    assert details["reason"] == "NAME_TAKEN"
    assert api.create(name="crm", as_="gina").subscription.id  # another tenant


def test_names_can_be_unique_per_creator(make_server: Any) -> None:
    api = make_server(WEBHOOKS_SUBSCRIPTION_NAMES_UNIQUE_PER="principal")
    first = api.create(name="crm").subscription
    second = api.create(name="crm", as_="bob").subscription  # another creator: allowed
    assert first.id != second.id
    details = expect_error(grpc.StatusCode.ALREADY_EXISTS, api.create, name="crm")
    assert details["reason"] == "NAME_TAKEN"
    mine = api.create(name="erp").subscription
    details = expect_error(grpc.StatusCode.ALREADY_EXISTS, _update, api, mine.id, name="crm")
    assert details["reason"] == "NAME_TAKEN"
    # An admin renaming bob's subscription is held to bob's names, not the admin's.
    _update(api, second.id, as_="admin", name="erp")
    listed = api.call("ListSubscriptions", pb.ListSubscriptionsRequest()).subscriptions
    assert sorted(s.name for s in listed) == ["crm", "erp", "erp"]
