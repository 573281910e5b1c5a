"""Connecting to one node of a RabbitMQ cluster given as a kombu failover URL (nodes separated by
``;``), from the node the caller chooses: the group publisher (tasks/publisher.py) starts at the
node after the one it lost last, so a dead or frozen node is not the first one tried again
(docs/cluster.md)."""

from __future__ import annotations


def connect_from(app, *, start: int, transport_options: dict):
    """A connection to the first node that answers, each node tried once, from node ``start``
    (an index into the broker URL's list, taken modulo its length); the connection and the index
    of its node."""
    nodes = app.conf.broker_url.split(";")
    first = start % len(nodes)
    conn = app.connection_for_write(
        url=";".join(nodes[first:] + nodes[:first]), transport_options=transport_options
    )
    try:
        conn.ensure_connection(
            max_retries=len(conn.alt) - 1 if conn.alt else 0,
            interval_start=0,
            interval_step=0,
            interval_max=0,
        )
    except Exception:
        discard(conn)
        raise
    return conn, _node_index(nodes, conn)


def _node_index(nodes: list[str], conn) -> int:
    from kombu.utils.url import parse_url

    for index, node in enumerate(nodes):
        params = parse_url(node)
        if (params.get("hostname"), params.get("port") or 5672) == (
            conn.hostname,
            conn.port or 5672,
        ):
            return index
    return 0


def discard(conn) -> None:
    """Drop a connection without the closing handshake: a blocked or broken connection could
    wait for it forever."""
    try:
        conn.collect()
    except Exception:  # noqa: S110 (it is being thrown away)
        pass
