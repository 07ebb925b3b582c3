"""Conductor registration, dead conductors and lost jobs."""

from __future__ import annotations

import datetime as dt
import os

import sqlalchemy as sa
from rq.worker import Worker

from conductor.bootstrap import build_context
from conductor.engine import conductors, sweeper
from conductor.models import ConductorRecord, Node, Request, utcnow
from tests.conftest import drain


def _node_with_request(client, target="power on"):  # type: ignore[no-untyped-def]
    client.post("/v1/nodes", json={"name": "n1", "driver": "fake"})
    return client.put("/v1/nodes/n1/states/power", json={"target": target}).json["id"]


def test_names_are_slots_and_a_dead_process_slot_is_reclaimed(settings) -> None:
    first, second = build_context(settings), build_context(settings)
    a, b = conductors.register(first), conductors.register(second)
    assert a.name.endswith("-w0") and b.name.endswith("-w1")
    assert not a.reclaimed
    with first.db.begin() as session:  # w0's process dies (pid of no process)
        session.execute(sa.update(ConductorRecord).where(ConductorRecord.name == a.name).values(
            pid=2**22 + 7, heartbeat_at=utcnow() - dt.timedelta(seconds=3 * settings.heartbeat_interval)))
    again = conductors.register(build_context(settings))
    assert again == conductors.Registration(a.name, reclaimed=True)


def test_stale_heartbeat_marks_a_conductor_dead_and_frees_its_work(client, ctx, settings) -> None:
    request_id = _node_with_request(client)
    dead_name = "otherhost-w0"
    with ctx.db.begin() as session:
        old = utcnow() - dt.timedelta(seconds=settings.heartbeat_timeout + 5)
        session.add(ConductorRecord(name=dead_name, hostname="otherhost", pid=1, heartbeat_at=old))
        session.execute(sa.update(Node).values(reservation=dead_name))
        session.execute(sa.update(Request).values(state="running", conductor=dead_name))
    fixed = sweeper.sweep(ctx)
    assert fixed["failed"] == 1
    request = client.get(f"/v1/requests/{request_id}").json
    assert request["state"] == "failed"
    assert f"Conductor {dead_name} stopped" in request["error"]
    node = client.get("/v1/nodes/n1").json
    assert node["reservation"] is None and node["request_id"] is None
    listed = {c["name"]: c["alive"] for c in client.get("/v1/conductors").json["conductors"]}
    assert listed[dead_name] is False


def test_live_conductors_work_is_left_alone(client, ctx, conductor_ctx) -> None:
    request_id = _node_with_request(client)
    with ctx.db.begin() as session:
        session.execute(sa.update(Node).values(reservation=conductor_ctx.name))
        session.execute(sa.update(Request).values(state="running", conductor=conductor_ctx.name))
    assert sweeper.sweep(ctx)["failed"] == 0
    assert client.get(f"/v1/requests/{request_id}").json["state"] == "running"
    assert {c["name"]: c["alive"] for c in client.get("/v1/conductors").json["conductors"]}[conductor_ctx.name]


def test_restarted_conductor_clears_its_own_previous_life(client, ctx, settings) -> None:
    request_id = _node_with_request(client)
    previous = build_context(settings)
    name = conductors.register(previous).name
    with ctx.db.begin() as session:
        session.execute(sa.update(Node).values(reservation=name))
        session.execute(sa.update(Request).values(state="running", conductor=name))
        session.execute(sa.update(ConductorRecord).values(  # its process is gone, its heartbeat quiet
            pid=2**22 + 9, heartbeat_at=utcnow() - dt.timedelta(seconds=3 * settings.heartbeat_interval)))
    reborn = build_context(settings)
    registration = conductors.register(reborn)
    assert registration == conductors.Registration(name, reclaimed=True)
    reborn.name = name
    assert sweeper.recover_conductor(reborn, name) == 1
    assert client.get(f"/v1/requests/{request_id}").json["state"] == "failed"
    assert client.get("/v1/nodes/n1").json["reservation"] is None


def test_queued_request_whose_job_vanished_is_enqueued_again(client, ctx) -> None:
    request_id = _node_with_request(client)
    ctx.queue.cancel(request_id)  # Redis lost it
    ctx.redis.delete(f"rq:job:{request_id}")
    assert not ctx.queue.has_pending_job(request_id)
    with ctx.db.begin() as session:
        session.execute(sa.update(Request).values(created_at=utcnow() - dt.timedelta(minutes=5)))
    assert sweeper.sweep(ctx)["requeued"] == 1
    assert request_id in ctx.queue.queue.job_ids
    ctx.redis.delete(f"{ctx.settings.redis_namespace}:requeue-sweep")  # the next sweep interval
    assert sweeper.sweep(ctx)["requeued"] == 0  # now it is there
    assert ctx.queue.queue.job_ids.count(request_id) == 1


def test_only_one_conductor_per_interval_requeues(client, ctx, settings) -> None:
    request_id = _node_with_request(client)
    ctx.queue.cancel(request_id)
    ctx.redis.delete(f"rq:job:{request_id}")
    with ctx.db.begin() as session:
        session.execute(sa.update(Request).values(created_at=utcnow() - dt.timedelta(minutes=5)))
    other = build_context(settings)
    other.name = "other-w0"
    assert sweeper.sweep(ctx)["requeued"] == 1
    ctx.queue.cancel(request_id)  # lost again at once: the other conductor's sweep waits its turn
    assert sweeper.sweep(other)["requeued"] == 0


def test_sleeping_request_whose_timer_vanished_is_rearmed(client, ctx) -> None:
    request_id = _node_with_request(client)
    ctx.queue.cancel(request_id)
    with ctx.db.begin() as session:
        session.execute(sa.update(Request).values(
            state="running", conductor=None, wake_at=utcnow() - dt.timedelta(minutes=5)))
    assert sweeper.sweep(ctx)["rearmed"] == 1
    assert ctx.redis.zscore(ctx.queue.timers_key, request_id) is not None


def test_pump_moves_due_timers_in_batches(ctx) -> None:
    for i in range(40):
        ctx.queue.schedule(f"req-{i}", 0)
    ctx.queue.schedule("req-later", 60)
    assert ctx.queue.pump_timers(batch_size=16) == 40
    assert ctx.queue.depth() == 3  # 16 + 16 + 8
    assert ctx.redis.zcard(ctx.queue.timers_key) == 1


def test_heartbeat_and_unregister(ctx, settings) -> None:
    worker_ctx = build_context(settings)
    worker_ctx.name = conductors.register(worker_ctx).name
    conductors.heartbeat(worker_ctx)
    listed = conductors.list_conductors(ctx.db, settings.heartbeat_timeout)
    assert listed[0]["alive"] and listed[0]["pid"] == os.getpid()
    conductors.unregister(worker_ctx)
    assert not conductors.list_conductors(ctx.db, settings.heartbeat_timeout)[0]["alive"]


def test_a_request_waiting_in_a_batch_job_is_not_mistaken_for_lost(client, ctx) -> None:
    request_id = _node_with_request(client)
    ctx.queue.cancel(request_id)
    with ctx.db.begin() as session:
        session.execute(sa.update(Request).values(
            state="running", conductor=None, wake_at=utcnow() - dt.timedelta(minutes=5)))
    ctx.queue.schedule(request_id, 0)
    assert ctx.queue.pump_timers() == 1  # now inside a batch job, behind a long queue
    assert sweeper.sweep(ctx)["rearmed"] == 0
    assert ctx.redis.zscore(ctx.queue.timers_key, request_id) is None


def test_a_live_slot_of_a_same_named_host_is_not_taken(settings) -> None:
    """A conductor in another PID namespace (a container) heartbeats under the same host name."""
    first = build_context(settings)
    a = conductors.register(first)
    with first.db.begin() as session:  # its pid means nothing here, but it is heartbeating
        session.execute(sa.update(ConductorRecord).where(ConductorRecord.name == a.name).values(pid=2**22 + 5))
    first.redis.set(f"{settings.redis_namespace}:conductor-pidns:{a.name}", "another-boot:4026531836")
    second = conductors.register(build_context(settings))
    assert second.name != a.name and not second.reclaimed


def test_a_dead_conductor_of_this_pid_namespace_frees_its_slot_at_once(settings) -> None:
    """A restarted worker takes its name back while its previous life's heartbeat is still fresh."""
    first = build_context(settings)
    a = conductors.register(first)
    with first.db.begin() as session:  # that process is gone (no such pid here)
        session.execute(sa.update(ConductorRecord).where(ConductorRecord.name == a.name).values(pid=2**22 + 5))
    second = conductors.register(build_context(settings))
    assert second.name == a.name and second.reclaimed


def test_a_name_taken_without_recording_its_namespace_keeps_no_stale_one(settings, monkeypatch) -> None:
    """A container takes a name that a process of ours held, and cannot record its namespace."""
    first = build_context(settings)
    a = conductors.register(first)  # records our PID namespace for that name
    with first.db.begin() as session:  # that process is long gone
        session.execute(sa.update(ConductorRecord).where(ConductorRecord.name == a.name).values(
            pid=2**22 + 5, heartbeat_at=utcnow() - dt.timedelta(seconds=3 * settings.heartbeat_interval)))
    with monkeypatch.context() as patch:  # the container's process: no namespace to record
        patch.setattr(conductors, "_pid_namespace", lambda: "")
        container = conductors.register(build_context(settings))
    assert container.name == a.name
    with first.db.begin() as session:  # it is heartbeating; its pid means nothing here
        session.execute(sa.update(ConductorRecord).where(ConductorRecord.name == a.name).values(pid=2**22 + 5))
    third = conductors.register(build_context(settings))
    assert third.name != a.name and not third.reclaimed


def test_a_conductor_whose_slot_was_taken_over_learns_it_from_its_heartbeat(settings) -> None:
    ctx = build_context(settings)
    ctx.name = conductors.register(ctx).name
    assert conductors.heartbeat(ctx) is True
    with ctx.db.begin() as session:
        session.execute(sa.update(ConductorRecord).values(pid=os.getpid() + 1))
    assert conductors.heartbeat(ctx) is False


def _a_worker_died_running(ctx, conductor: str, job) -> None:  # type: ignore[no-untyped-def]
    """Leave in Redis what an RQ worker of ``conductor`` killed while running ``job`` leaves."""
    from rq.serializers import JSONSerializer
    from rq.worker import SimpleWorker

    worker = SimpleWorker([ctx.queue.queue], connection=ctx.redis, name=f"{conductor}.4242",
                          serializer=JSONSerializer)
    worker.register_birth()
    worker.prepare_execution(job)


def test_the_steps_a_dead_conductor_had_taken_from_the_queue_run_again_at_once(
        client, ctx, conductor_ctx, settings) -> None:
    """Dead conductors' workers held a batch of due steps and a first step: re-armed once they are declared dead."""
    sleeping = _node_with_request(client)
    client.post("/v1/nodes", json={"name": "n2", "driver": "fake"})
    queued = client.put("/v1/nodes/n2/states/power", json={"target": "power on"}).json["id"]
    ctx.queue.cancel(sleeping)
    dead = "otherhost-w0"
    with ctx.db.begin() as session:
        old = utcnow() - dt.timedelta(seconds=settings.heartbeat_timeout + 5)
        session.add(ConductorRecord(name=dead, hostname="otherhost", pid=1, heartbeat_at=old))
        session.execute(sa.update(Request).where(Request.id == sleeping).values(
            state="running", conductor=None, wake_at=utcnow()))
    # The batch job that took the sleeping request's step: pumped, then dequeued by the dead worker.
    ctx.queue.schedule(sleeping, 0)
    assert ctx.queue.pump_timers() == 1
    batch = ctx.queue.queue.jobs[-1]
    assert batch.args == [[sleeping]]
    _a_worker_died_running(ctx, dead, batch)
    ctx.queue.queue.remove(batch)
    # As long as the worker is registered, the request looks as if it waited in a busy queue.
    assert ctx.queue.pending([sleeping]) == {sleeping}
    first = ctx.queue.queue.fetch_job(queued)
    ctx.queue.queue.remove(first)
    _a_worker_died_running(ctx, "otherhost-w1", first)
    with ctx.db.begin() as session:
        session.add(ConductorRecord(name="otherhost-w1", hostname="otherhost", pid=2, heartbeat_at=old))

    sweeper.sweep(ctx)
    # Both steps are in Redis again for any conductor, and no dead worker is left to hand them over twice.
    assert ctx.redis.zscore(ctx.queue.timers_key, sleeping) is not None
    assert ctx.redis.zscore(ctx.queue.pumped_key, sleeping) is None
    assert queued in ctx.queue.queue.job_ids
    assert not Worker.all(connection=ctx.redis, queue=ctx.queue.queue)
    # And they run: the requests succeed.
    drain(conductor_ctx)
    assert [client.get(f"/v1/requests/{r}").json["state"] for r in (sleeping, queued)] == ["succeeded"] * 2
