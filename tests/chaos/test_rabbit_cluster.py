"""A 3-node RabbitMQ cluster with quorum queues loses a node, then another (issue 11).

Three private nodes (``servers.RabbitCluster``, started once for this module); PostgreSQL is
the shared server with a schema of its own (no fault touches it). Every client names all three
nodes in its URL (``?queue_type=quorum``): the submitter and worker w1 name n1 first, w2 n2
first, w3 n3 first. The task queue is declared by the submitter, so its Raft leader is on n1.

While tasks are submitted continuously: n1 is SIGKILLed (the submitter, w1 and the queue's
leader are on it), left down, restarted, and waited for until it runs in the cluster again and
is an online member of every quorum queue; then the node the submitter failed over to (n2, w2's
too) is SIGKILLed and stays down to the end of the run. For each outage the tally notes the
tasks submitted and succeeded while the node was down, how many of those the worker that had
been on the killed node ran, and the longest stretch with no task finishing (the failover stall).
Reruns are allowed up to ``concurrency + prefetch`` per worker attached to a killed node (none
were seen: handlers go on and store their outcome; the requeued messages are dropped as final).

The first test checks the fix this scenario led to: after such a failover, RabbitMQ 3.10 nacked
every publish on the client's new channel until the old leader's node was back, so the
submitter's messages all waited for the reconciler (a 5 s stall per kill).
"""

from __future__ import annotations

import bisect
import itertools
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conveyor.broker.rabbitmq import RabbitmqBroker
from conveyor.model import TaskStatus
from conveyor.store import open_store
from tests.chaos.drill import CONCURRENCY
from tests.chaos.harness import CHAOS_APP, Submitter, all_tasks, count, scale, work_requests
from tests.chaos.servers import PrivateRabbit, RabbitCluster
from tests.integration.conftest import PREFETCH, Cluster, serve
from tests.processes import WorkerProcess

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(scale(180, 1500))]

SCENARIO = "rabbitmq-cluster-node-killed"
SLEEP_S = scale(0.2, 0.05)  # per task
WARMUP_S = scale(3, 15)  # submitting before the first kill
DOWN_S = scale(6, 30)  # each node down this long (the second one stays down to the end)
SETTLE_S = scale(45, 120)
MAX_TASKS = scale(5_000, 200_000)  # an upper bound: the submitter is stopped after the last outage
QUORUM = "queue_type=quorum"
RECONCILED = re.compile(r"published (\d+) task message\(s\) left unpublished")
ORDERS = {"w1": (0, 1, 2), "w2": (1, 2, 0), "w3": (2, 0, 1)}  # the submitter's order is w1's


@dataclass
class Outage:
    node: PrivateRabbit
    killed_at: float  # wall clock, as the tasks' timestamps
    connections: dict[str, int]  # on the victim just before the kill, by connection name
    was_leader: bool  # of the task queue
    up_at: float = 0.0  # restart begun (or the run's end): the window counted is killed_at..up_at
    rejoin_s: float | None = None  # restart until it is back in every quorum queue
    figures: dict[str, object] = field(default_factory=dict)


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    """One cluster for the module (3 Erlang VMs start slowly); removed even if the test fails."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail("rabbitmq-server is not installed (scripts/install-debian-packages.sh --services)")
    nodes = RabbitCluster()
    try:
        started = time.monotonic()
        nodes.start()
        print(f"\n3-node RabbitMQ cluster up in {time.monotonic() - started:.1f} s", flush=True)
        yield nodes
    finally:
        nodes.close()


def new_vhost(rabbit: RabbitCluster) -> str:
    vhost = f"chaos_{uuid.uuid4().hex[:8]}"
    node = rabbit.survivor()
    node.ctl("add_vhost", vhost)
    node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost


def leader_of(rabbit: RabbitCluster, vhost: str, queue: str) -> PrivateRabbit:
    leader = next(q["leader"] for q in rabbit.quorum_queues(vhost) if q["name"] == queue)
    return next(n for n in rabbit.nodes if n.node == leader)


def short_name(node: PrivateRabbit) -> str:
    return node.node.split("@")[0].rsplit("-", 1)[1]


class QuorumCluster(Cluster):
    """A ``Cluster`` on the RabbitMQ cluster; ``vhost`` is its own vhost there."""

    def __init__(self, tmp_path: Path, broker_url: str, store_url: str, vhost: str) -> None:
        super().__init__(tmp_path, broker_url, store_url)
        self.vhost = vhost


@pytest.fixture
def quorum_cluster(tmp_path: Path, rabbit_cluster: RabbitCluster, postgres_schema_url: str,
                   request: pytest.FixtureRequest) -> Iterator[QuorumCluster]:
    """Workers and a client on the cluster (own vhost, quorum queues) and the shared PostgreSQL."""
    rabbit_cluster.wait_running(rabbit_cluster.nodes)
    vhost = new_vhost(rabbit_cluster)
    yield from serve(QuorumCluster(tmp_path, rabbit_cluster.url(ORDERS["w1"], vhost=vhost, query=QUORUM),
                                   postgres_schema_url, vhost), request)


def connections_on(rabbit: RabbitCluster, node: PrivateRabbit, vhost: str) -> dict[str, int]:
    """Our vhost's client connections to ``node``, by connection name."""
    out = rabbit.survivor().ctl("list_connections", "-q", "--no-table-headers", "port", "vhost", "client_properties")
    found: dict[str, int] = {}
    for line in out.splitlines():
        port, _, rest = line.partition("\t")
        conn_vhost, _, properties = rest.partition("\t")
        if port.strip() == str(node.port) and conn_vhost == vhost:
            name = "worker" if "conveyor worker" in properties else "client"
            found[name] = found.get(name, 0) + 1
    return found


def submitter_node(cluster: Cluster, rabbit: RabbitCluster) -> PrivateRabbit:
    """The node the submitting client is connected to now."""
    link = cluster.service.broker.link  # type: ignore[attr-defined]
    port = urlsplit(link.hosts[link._host_index]).port
    assert port is not None
    return rabbit.node_on_port(port)


def reconciled(workers: Iterable[WorkerProcess]) -> int:
    """Task messages the workers' reconcilers published (the submitter had not, within 3 s)."""
    return sum(int(m.group(1)) for w in workers for m in RECONCILED.finditer(w.output()))


def measure(outage: Outage, finishes: list[tuple[float, str]], created: list[float], victim_workers: set[str]) -> None:
    """Tasks submitted and succeeded while the node was down, and the longest stall."""
    start, end = outage.killed_at, outage.up_at
    done = [(t, node) for t, node in finishes if start <= t <= end]
    times = [start, *(t for t, _ in done), end]
    outage.figures = {
        "down_s": round(end - start, 1),
        "submitted": bisect.bisect_right(created, end) - bisect.bisect_left(created, start),
        "succeeded": len(done),
        "succeeded_by_moved_worker": sum(1 for _, node in done if node in victim_workers),
        "stall_s": round(max(b - a for a, b in itertools.pairwise(times)), 1),
    }


def test_a_publish_on_a_channel_opened_while_the_queue_elects_a_leader_is_confirmed(
        rabbit_cluster: RabbitCluster) -> None:
    """RabbitMQ 3.10.8: a channel opened while a quorum queue elects a new leader (a client
    failing over from the node that held it) nacks every publish to that queue as long as that
    node is down. The link publishes again on a new channel (it used to raise BrokerError)."""
    rabbit = rabbit_cluster
    rabbit.wait_running(rabbit.nodes)
    vhost = new_vhost(rabbit)
    n1 = rabbit.nodes[0]
    broker = RabbitmqBroker(rabbit.url((0, 1, 2), vhost=vhost, query=QUORUM))
    try:
        broker.declare_queue("work")  # from n1: the queue's leader is there
        assert leader_of(rabbit, vhost, "conveyor.work") is n1
        n1.kill9()  # the link reconnects to n2 at once, before the new leader is known
        started = time.monotonic()
        broker.publish_many([(b"%d" % i, "work", 0, 0.0, None) for i in range(5)])
        took = time.monotonic() - started
        consumer = broker.consume(["work"], prefetch=10)
        got = []
        for _ in range(5):
            delivery = consumer.get(10.0)
            assert delivery is not None, f"only {got} of the 5 confirmed messages arrived"
            got.append(delivery.body)
            delivery.ack()
        assert sorted(got) == [b"%d" % i for i in range(5)]
        assert took < 10.0, f"the publish took {took:.1f} s"
    finally:
        broker.close()
        n1.restart()
        rabbit.wait_rejoined(n1, vhost)


def test_rabbitmq_cluster_node_killed(quorum_cluster: QuorumCluster, rabbit_cluster: RabbitCluster) -> None:
    cluster, rabbit = quorum_cluster, rabbit_cluster
    vhost = cluster.vhost
    n1 = rabbit.nodes[0]
    cluster.service.broker.declare_queue("default")  # from n1: the queue's Raft leader is there
    workers: dict[str, WorkerProcess] = {
        name: cluster.start(name, concurrency=CONCURRENCY, wait_ready=False, app=CHAOS_APP,
                            extra_env={"CONVEYOR_BROKER_URL": rabbit.url(order, vhost=vhost, query=QUORUM)})
        for name, order in ORDERS.items()}
    for worker in workers.values():
        cluster.wait_ready(worker)
    leader = leader_of(rabbit, vhost, "conveyor.default")
    assert leader is n1 and submitter_node(cluster, rabbit) is n1

    started = time.monotonic()
    submitter = Submitter(cluster.service, work_requests(MAX_TASKS, SCENARIO, sleep_s=SLEEP_S), batch=10,
                          pause_s=0.2, give_up_s=scale(30, 60))
    submitter.start()
    outages: list[Outage] = []
    try:
        time.sleep(WARMUP_S)
        # 1. n1: the submitter's, w1's and the queue leader's node. Down, restarted, rejoined.
        outages.append(Outage(n1, 0.0, connections_on(rabbit, n1, vhost), leader is n1))
        outages[0].killed_at = time.time()
        n1.kill9()
        time.sleep(DOWN_S)
        outages[0].up_at = time.time()
        n1.restart()
        rabbit.wait_rejoined(n1, vhost)
        outages[0].rejoin_s = round(time.time() - outages[0].up_at, 1)
        time.sleep(2)
        # 2. the node the submitter failed over to; it stays down.
        victim = submitter_node(cluster, rabbit)
        assert victim is not n1, "the submitter is back on n1: its failover went round the whole list"
        outages.append(Outage(victim, 0.0, connections_on(rabbit, victim, vhost),
                              leader_of(rabbit, vhost, "conveyor.default") is victim))
        outages[1].killed_at = time.time()
        victim.kill9()
        time.sleep(DOWN_S)
        outages[1].up_at = time.time()
    finally:
        accepted = submitter.stop(timeout_s=scale(45, 90))

    store = open_store(cluster.store_url)
    try:
        allowed = 3 * (CONCURRENCY + PREFETCH)  # w1 on the first kill, w1 and w2 on the second
        tally = count(SCENARIO, accepted=accepted, store=store, exec_log=cluster.exec_log, started=started,
                      settle_s=SETTLE_S, expected=len(accepted),
                      notes={"refused_batches": len(submitter.refusals), "abandoned": submitter.abandoned,
                             "leader": short_name(leader), "reconciled": reconciled(workers.values())})
        tasks = all_tasks(store)
    finally:
        store.close()
    finishes = sorted((t.finished_at, t.node or "") for t in tasks.values()
                      if t.status is TaskStatus.SUCCEEDED and t.finished_at is not None)
    created = sorted(t.created_at for t in tasks.values())
    moved = {"w1"}
    for i, outage in enumerate(outages):
        measure(outage, finishes, created, moved)
        tally.notes[f"kill{i + 1}"] = short_name(outage.node)
        tally.notes[f"kill{i + 1}_was_leader"] = outage.was_leader
        tally.notes.update({f"kill{i + 1}_{k}": v for k, v in outage.figures.items()})
        if outage.rejoin_s is not None:
            tally.notes[f"kill{i + 1}_rejoin_s"] = outage.rejoin_s
        moved = {"w1", "w2"}
    tally.publish()

    first, second = outages
    assert first.connections.get("worker") and first.connections.get("client"), \
        f"n1 had no worker or no client connection of ours before the kill: {first.connections}"
    assert second.connections.get("worker") and second.connections.get("client"), \
        f"{second.node.node} had no worker or no client connection of ours before the kill: {second.connections}"
    for i, outage in enumerate(outages, 1):
        assert outage.figures["submitted"] and outage.figures["succeeded"], \
            f"work did not go on while node {i} was down: {outage.figures}"
    assert first.figures["succeeded_by_moved_worker"], "w1 ran nothing after its node died (no failover)"
    assert not tally.problems(ran_twice_allowed=allowed)
