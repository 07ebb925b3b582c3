"""Metrics recorded after commit, shared through Redis, counted for BMC failures too."""

from __future__ import annotations

from conductor import metrics
from tests.conftest import drain


def test_bmc_errors_and_failed_requests_are_counted(client, ctx, conductor_ctx) -> None:
    client.post("/v1/nodes", json={"name": "bad", "driver": "fake", "driver_info": {"fake_fail": "no BMC"}})
    client.put("/v1/nodes/bad/states/power", json={"target": "power on"})
    drain(conductor_ctx)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'conductor_bmc_command_errors_total{command="set_power_state",driver="fake"} 1.0' in text
    assert 'conductor_request_duration_seconds_count{kind="power",outcome="failed"} 1.0' in text


def test_a_rolled_back_transaction_records_nothing(ctx) -> None:
    import sqlalchemy as sa

    from conductor.models import Request, utcnow

    with ctx.db.session() as session:
        session.execute(sa.text("SELECT 1"))
        request = Request(kind="power", state="succeeded", created_at=utcnow(), finished_at=utcnow())
        metrics.request_finished(session, request)
        session.rollback()
        session.commit()
    assert ctx.redis.hgetall(metrics.recorder(ctx).key) == {}


def test_histogram_buckets_are_cumulative(client, ctx) -> None:
    sink = metrics.recorder(ctx)
    sink.write(observations=[(metrics.BMC_DURATION, {"driver": "d", "command": "c"}, v) for v in (0.004, 0.03, 20)])
    text = client.get("/metrics").get_data(as_text=True)
    assert 'conductor_bmc_command_duration_seconds_bucket{command="c",driver="d",le="0.005"} 1.0' in text
    assert 'conductor_bmc_command_duration_seconds_bucket{command="c",driver="d",le="0.05"} 2.0' in text
    assert 'conductor_bmc_command_duration_seconds_bucket{command="c",driver="d",le="+Inf"} 3.0' in text
    assert 'conductor_bmc_command_duration_seconds_count{command="c",driver="d"} 3.0' in text
