"""The stand-in honours openapi.yaml: every operation exercised, every response validated."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import yaml
from openapi_spec_validator import validate

from . import contract
from .conftest import Standin


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = contract.document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    assert yaml.safe_dump(doc)  # round-trips


def test_every_operation_and_response_matches_the_contract(standin: Standin) -> None:
    ops = {"Authorization": f"Bearer {standin.ops_token}"}
    check = contract.check
    contract.covered.clear()
    with httpx.Client(base_url=standin.url, timeout=10) as http:
        assert check(http.get("/health")) == {"status": "ok"}
        ready = check(http.get("/health/ready"))
        assert ready["status"] == "ready"
        assert ready["checks"]["database_role"] == "booking_app_a"
        version = check(http.get("/version"))
        assert version["schema_version_expected"]
        # the application role reads the migration history (0005): the schema it runs on
        assert version["schema_version"] == version["schema_version_expected"]

        assert check(http.get("/ops/maintenance")).get("status") == 401
        assert check(http.get("/ops/maintenance", headers=ops))["enabled"] is False
        bad = http.put("/ops/maintenance", headers=ops, json={"enabled": "yes"})
        assert check(bad)["status"] == 422
        assert check(http.put("/ops/maintenance", json={"enabled": True}))["status"] == 401

        fixture = check(http.post("/ops/smoke-fixture", headers=ops))
        assert check(http.post("/ops/smoke-fixture", headers=ops)) == {
            **fixture,
            "tenant_token": check(http.post("/ops/smoke-fixture", headers=ops))["tenant_token"],
        }  # idempotent: same tenant, artist and project
        tenant = fixture["tenant_id"]
        minted = check(http.post(f"/ops/tenants/{tenant}/tokens", headers=ops))
        assert minted["tenant_id"] == tenant
        assert check(http.post(f"/ops/tenants/{uuid.uuid4()}/tokens", headers=ops))["status"] == 404
        assert check(http.post(f"/ops/tenants/{tenant}/tokens"))["status"] == 401

        auth = {"Authorization": f"Bearer {minted['token']}"}
        base = f"/tenants/{tenant}/bookings"
        start = datetime(2031, 1, 1, 9, tzinfo=UTC)
        new = {
            "artist_id": fixture["artist_id"],
            "project_id": fixture["project_id"],
            "starts_at": start.isoformat(),
            "ends_at": (start + timedelta(hours=8)).isoformat(),
        }
        created = check(http.post(base, headers=auth, json=new))
        assert created["status"] == "confirmed"
        overlap = {
            **new,
            "starts_at": (start + timedelta(hours=4)).isoformat(),
            "ends_at": (start + timedelta(hours=10)).isoformat(),
        }
        assert check(http.post(base, headers=auth, json=overlap))["status"] == 409
        assert (
            check(http.post(base, headers=auth, json={**new, "ends_at": new["starts_at"]}))[
                "status"
            ]
            == 422
        )
        assert check(http.post(base, json=new))["status"] == 401
        other = f"/tenants/{uuid.uuid4()}/bookings"
        assert check(http.post(other, headers=auth, json=new))["status"] == 403

        listed = check(http.get(base, headers=auth, params={"limit": 10}))
        assert [b["id"] for b in listed["items"]] == [created["id"]]
        assert check(http.get(base, headers=auth, params={"limit": 0}))["status"] == 422
        assert check(http.get(base))["status"] == 401
        assert check(http.get(other, headers=auth))["status"] == 403

        cancel = f"{base}/{created['id']}/cancel"
        assert check(http.post(cancel, headers=auth))["status"] == "cancelled"
        assert check(http.post(cancel, headers=auth))["status"] == "cancelled"  # idempotent
        assert check(http.post(f"{base}/{uuid.uuid4()}/cancel", headers=auth))["status"] == 404
        assert check(http.post(cancel))["status"] == 401
        assert check(http.post(f"{other}/{created['id']}/cancel", headers=auth))["status"] == 403

        on = check(http.put("/ops/maintenance", headers=ops, json={"enabled": True, "reason": "t"}))
        assert on["enabled"] is True and on["reason"] == "t"
        paused = http.post(base, headers=auth, json=new)
        assert check(paused)["status"] == 503
        assert paused.headers["retry-after"].isdigit()
        assert check(http.post(cancel, headers=auth))["status"] == 503
        assert check(http.post("/ops/smoke-fixture", headers=ops))["status"] == 503
        assert check(http.get(base, headers=auth))["count"] == 1  # reads still work
        assert (
            check(http.put("/ops/maintenance", headers=ops, json={"enabled": False}))["enabled"]
            is False
        )

        # readiness fails (503) when the API's credentials stop working
        doc = standin.secrets_doc()
        with standin.db.connect() as conn:
            conn.execute("ALTER ROLE booking_app_a PASSWORD 'no-longer-valid-pw'")
        import time

        time.sleep(1.1)  # readiness results are cached for one second
        failing = http.get("/health/ready")
        body = check(failing)
        assert failing.status_code == 503
        assert "password authentication failed" in body["reason"]
        assert doc["passwords"]["booking_app_a"] not in failing.text

    missing = {
        (method, path)
        for method, path in contract.operations()
        if not any(m == method and p == path for m, p, _ in contract.covered)
    }
    assert not missing, f"operations never exercised: {missing}"


def test_tenant_isolation_is_enforced_by_the_database(standin: Standin) -> None:
    """Rows of another tenant are invisible even though the list query has no tenant filter."""
    ops = standin.client()
    fixture = ops.smoke_fixture()
    other_tenant = uuid.uuid4()
    with standin.db.connect() as conn:
        conn.execute(
            "INSERT INTO booking.tenants (id, slug, name) VALUES (%s, 'other', 'Other')",
            (other_tenant,),
        )
        artist = conn.execute(
            "INSERT INTO booking.artists (tenant_id, name) VALUES (%s, 'A') RETURNING id",
            (other_tenant,),
        ).fetchone()
        project = conn.execute(
            "INSERT INTO booking.projects (tenant_id, name) VALUES (%s, 'P') RETURNING id",
            (other_tenant,),
        ).fetchone()
        assert artist and project
        conn.execute(
            "INSERT INTO booking.bookings (tenant_id, artist_id, project_id, period, status) "
            "VALUES (%s, %s, %s, tstzrange(now(), now() + interval '1 hour'), 'confirmed')",
            (other_tenant, artist[0], project[0]),
        )
        # the stand-in's role obeys row-level security: it is neither owner nor BYPASSRLS
        row = conn.execute(
            "SELECT rolbypassrls, rolsuper FROM pg_roles WHERE rolname = 'booking_app_a'"
        ).fetchone()
        assert row == (False, False)
    mine = ops.list_bookings(fixture["tenant_id"], fixture["tenant_token"])
    assert all(b["tenant_id"] == fixture["tenant_id"] for b in mine)
    theirs = ops.list_bookings(str(other_tenant), ops.mint_tenant_token(str(other_tenant)))
    assert len(theirs) == 1 and theirs[0]["tenant_id"] == str(other_tenant)
    # the smoke tenant's token cannot create in the other tenant's artist (FK within tenant)
    from ptool_ops.booking.api import ApiError

    try:
        ops.create_booking(
            fixture["tenant_id"],
            fixture["tenant_token"],
            artist_id=str(artist[0]),
            project_id=fixture["project_id"],
            starts_at=datetime(2032, 1, 1, tzinfo=UTC),
            ends_at=datetime(2032, 1, 2, tzinfo=UTC),
        )
    except ApiError as err:
        assert err.status == 422
    else:
        raise AssertionError("a booking of another tenant's artist was accepted")
