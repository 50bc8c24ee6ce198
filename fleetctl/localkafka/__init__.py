"""The embedded local broker: Apache Kafka jars from Maven Central, run as detached JVMs.

This is the zero-setup default (DESIGN §9): no Docker, only Java 17+ and Maven. The jars
are cached per version and shared by every run dir; a run dir holds one broker (its
config, data, logs, pid and bootstrap files), or a cluster of a few KRaft nodes with
those files per node in node-<i>/, so tests use their own run dir and never touch a
user's broker. A run dir keeps its data and ports across stop and start (a development
broker stays where its clients look for it); ``start(fresh=True)`` wipes the data.
A cluster is for fault tests: ``kill_node`` crashes one node,
``start_node`` brings it back on its own data and ports.

The rooms: :mod:`~fleetctl.localkafka.jars` (the distribution, fetched into the cache),
:mod:`~fleetctl.localkafka.nodes` (a node's files and configuration: server.properties,
ports, cluster id), :mod:`~fleetctl.localkafka.kept` (the ports and data a run dir keeps
across stop and start), :mod:`~fleetctl.localkafka.process` (spawn detached, pid and command
line checks, signals, the run dir's lock), :mod:`~fleetctl.localkafka.status` (what runs
in a run dir, and ``resolve_bootstrap``) and :mod:`~fleetctl.localkafka.broker`
(``LocalKafka``: start, restart, stop, kill and start a node).
"""

from fleetctl.localkafka.broker import LocalKafka
from fleetctl.localkafka.kept import KeptBroker
from fleetctl.localkafka.status import BrokerStatus, resolve_bootstrap

__all__ = ["BrokerStatus", "KeptBroker", "LocalKafka", "resolve_bootstrap"]
