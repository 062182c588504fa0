"""Event type catalog RPCs and the catalog file, over a real port on both stores."""

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from service.errors import StartupError
from tests.support import Api, expect_error
from webhooks.v1 import webhook_service_pb2 as pb

SCHEMA = json.dumps(
    {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
)


def _all_names(api: Api, as_: str = "reader", **kwargs: Any) -> list[str]:
    names: list[str] = []
    token = ""
    while True:
        page = api.call(
            "ListEventTypes",
            pb.ListEventTypesRequest(page_size=3, page_token=token, **kwargs),
            as_=as_,
        )
        names += [e.name for e in page.event_types]
        token = page.next_page_token
        if not token:
            return names


def test_catalog_file_is_loaded_at_start_and_listed_by_name(api: Api) -> None:
    names = _all_names(api)
    assert names == sorted(names)
    assert {"lead.created", "meeting.booked", "person.created", "webhook.test"} <= set(names)
    lead = api.call(
        "GetEventType", pb.GetEventTypeRequest(name="lead.created"), as_="reader"
    ).event_type
    assert lead.required_scope == "leads:subscribe"
    assert json.loads(lead.json_schema)["required"] == ["lead_id"]
    assert json.loads(lead.example_json)["lead_id"] == "lead_123"


def test_subscribable_only_filters_by_the_callers_scopes(api: Api) -> None:
    for_bob = set(_all_names(api, as_="bob", subscribable_only=True))  # no subscribe scopes
    assert (
        "person.created" in for_bob
        and "lead.created" not in for_bob
        and "meeting.booked" not in for_bob
    )
    for_alice = set(_all_names(api, as_="alice", subscribable_only=True))  # leads:subscribe
    assert "lead.created" in for_alice and "meeting.booked" not in for_alice
    assert set(_all_names(api, as_="admin", subscribable_only=True)) == set(_all_names(api))


def test_create_update_delete_event_type(api: Api) -> None:
    created = api.call(
        "CreateEventType",
        pb.CreateEventTypeRequest(
            event_type=pb.EventType(
                name="ticket.closed",
                description="A ticket was closed",
                required_scope="tickets:subscribe",
                json_schema=SCHEMA,
                example_json='{"id": 7}',
            )
        ),
        as_="operator",
    ).event_type
    assert created.name == "ticket.closed" and created.create_time.seconds > 0
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        api.call,
        "CreateEventType",
        pb.CreateEventTypeRequest(event_type=pb.EventType(name="ticket.closed")),
        as_="operator",
    )
    updated = api.call(
        "UpdateEventType",
        pb.UpdateEventTypeRequest(
            event_type=pb.EventType(name="ticket.closed", description="Closed for good"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        ),
        as_="operator",
    ).event_type
    assert (
        updated.description == "Closed for good" and updated.required_scope == "tickets:subscribe"
    )
    # Now subscribable, and deletion is refused while a subscription names it.
    sub = api.create(as_="admin", event_types=["ticket.closed"]).subscription
    busy = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        api.call,
        "DeleteEventType",
        pb.DeleteEventTypeRequest(name="ticket.closed"),
        as_="operator",
    )
    assert busy["reason"] == "EVENT_TYPE_IN_USE"
    api.call("DeleteSubscription", pb.DeleteSubscriptionRequest(id=sub.id), as_="admin")
    api.call("DeleteEventType", pb.DeleteEventTypeRequest(name="ticket.closed"), as_="operator")
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        api.call,
        "GetEventType",
        pb.GetEventTypeRequest(name="ticket.closed"),
    )


def test_catalog_writes_need_the_operators_scope(api: Api) -> None:
    """The catalog is every tenant's: a tenant's admin changing a schema broke another
    tenant's PublishEvent (attack run). Only webhooks:catalog, never implied, may."""
    request = pb.CreateEventTypeRequest(event_type=pb.EventType(name="x.y"))
    for who in ("alice", "admin", "gina"):
        details = expect_error(
            grpc.StatusCode.PERMISSION_DENIED, api.call, "CreateEventType", request, as_=who
        )
        assert details["metadata"] == {"scope": "webhooks:catalog"}
    update = pb.UpdateEventTypeRequest(
        event_type=pb.EventType(name="person.created", json_schema='{"type": "string"}'),
        update_mask=field_mask_pb2.FieldMask(paths=["json_schema"]),
    )
    expect_error(grpc.StatusCode.PERMISSION_DENIED, api.call, "UpdateEventType", update, as_="gina")
    assert not api.call(
        "GetEventType", pb.GetEventTypeRequest(name="person.created")
    ).event_type.json_schema
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        api.call,
        "DeleteEventType",
        pb.DeleteEventTypeRequest(name="lead.created"),
        as_="alice",
    )


@pytest.mark.parametrize(
    ("event_type", "field", "text"),
    [
        (pb.EventType(name=""), "event_type.name", "required"),
        (pb.EventType(name="has space"), "event_type.name", "letters"),
        (pb.EventType(name="wild.*"), "event_type.name", "letters"),
        (
            pb.EventType(name="a.b", required_scope="no-colon"),
            "event_type.required_scope",
            "domain:action",
        ),
        (
            pb.EventType(name="a.b", json_schema="{not json"),
            "event_type.json_schema",
            "not valid JSON",
        ),
        (
            pb.EventType(name="a.b", json_schema='{"type": 5}'),
            "event_type.json_schema",
            "not a valid JSON Schema",
        ),
        (pb.EventType(name="a.b", json_schema="[1]"), "event_type.json_schema", "JSON object"),
        (
            pb.EventType(name="a.b", json_schema=SCHEMA, example_json='{"id": "x"}'),
            "event_type.example_json",
            "schema",
        ),
    ],
)
def test_event_type_validation(api: Api, event_type: pb.EventType, field: str, text: str) -> None:
    details = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.call,
        "CreateEventType",
        pb.CreateEventTypeRequest(event_type=event_type),
        as_="operator",
    )
    assert text in details["violations"][field], details


def test_name_is_immutable_in_updates(api: Api) -> None:
    details = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.call,
        "UpdateEventType",
        pb.UpdateEventTypeRequest(
            event_type=pb.EventType(name="lead.created"),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        ),
        as_="operator",
    )
    assert "output only" in details["violations"]["update_mask"]


def test_invalid_catalog_file_stops_the_start(make_server: Any, tmp_path: Path) -> None:
    bad = tmp_path / "catalog.json"
    bad.write_text(json.dumps({"event_types": [{"name": "ok.one"}, {"name": "bad name"}]}))
    with pytest.raises(StartupError, match=r"event_types\[1\]\.name"):
        make_server(WEBHOOKS_EVENT_TYPES_FILE=str(bad))
