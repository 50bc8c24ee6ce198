"""The one settings object, built at the entry point from the environment.

Nothing in the product reads ``os.environ`` except :meth:`Settings.from_env`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleet.errors import ConfigError

# Not 4.3.x/4.4.0: their transaction coordinator skips the commit markers of a partition
# that is leaderless for a moment (a clean broker stop) and records the commit anyway, so
# the transaction hangs open on that partition for good (KAFKA-20734, fix not released;
# reproduced in our fault runs). 4.2.1 writes the markers once the leader is back.
DEFAULT_KAFKA_VERSION = "4.2.1"
# librdkafka's transaction.timeout.ms unless FLEET_KAFKA_CLIENT_TRANSACTION_TIMEOUT_MS says
# otherwise: the coordinator aborts a transaction left open longer than this.
TRANSACTION_TIMEOUT_MS = 60_000

Guarantee = Literal["exactly_once", "at_least_once"]

# Any FLEET_KAFKA_CLIENT_<NAME> variable becomes the librdkafka property <name> with
# "_" -> ".", e.g. FLEET_KAFKA_CLIENT_SECURITY_PROTOCOL=SASL_SSL -> security.protocol=SASL_SSL.
# This is how users point the product at a secured cluster without a config file.
_CLIENT_PREFIX = "FLEET_KAFKA_CLIENT_"
_TOPIC_PREFIX_RE = re.compile(r"^[a-zA-Z0-9._-]*$")


def _bundled(name: str) -> Path:
    """A file shipped with the product: inside the wheel, else at the repository root."""
    here = Path(__file__).resolve().parent
    inside = here / "_bundled" / name
    return inside if inside.exists() else here.parent / name


class Settings(BaseModel):
    """Everything a fleet process needs to know about its environment."""

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str | None = None
    client_config: dict[str, str] = Field(default_factory=dict)
    topic_prefix: str = "fleet."
    topology_file: Path = Field(default_factory=lambda: _bundled("topics.yaml"))
    # Resource pools, bands and tenants of the market (orchestrator.market.policy).
    market_file: Path = Field(default_factory=lambda: _bundled("market.yaml"))
    schemas_dir: Path = Field(default_factory=lambda: _bundled("schemas"))
    kafka_version: str = DEFAULT_KAFKA_VERSION
    kafka_cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "fleet" / "kafka"
    )
    kafka_run_dir: Path = Field(
        default_factory=lambda: Path.home() / ".local" / "state" / "fleet" / "kafka"
    )
    connect_timeout_s: float = Field(default=15.0, gt=0)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "info"
    # exactly_once: effects, changelog and input offsets in one Kafka transaction.
    # at_least_once: no transaction; a crash can replay inputs (see the orchestrator).
    orchestrator_guarantee: Guarantee = "exactly_once"
    # How long the orchestrator keeps one transaction (or one offset commit) open across
    # consumed batches; 0 commits after every batch (like Kafka Streams' commit.interval.ms).
    orchestrator_commit_interval_ms: int = Field(default=0, ge=0)
    # A stable name for this orchestrator instance (a StatefulSet pod name, a supervisor's
    # slot), unique among the running instances. Its transactional id and its static group
    # membership (group.instance.id) are derived from it, so a replacement started under
    # the same name aborts the dead instance's open transaction at once and takes back its
    # partitions without a rebalance. None: a fresh random id each start (the dead
    # instance's transaction then waits out transaction.timeout.ms).
    orchestrator_instance_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    # Agents (fleet.cards, fleet.liveness): how often a worker heartbeats (readers call
    # it stale after 3 missed, dead after 10), the window of the latency and error figures
    # it reports, its region, and the name its agent id is made of (else the app's module).
    heartbeat_s: float = Field(default=2.0, gt=0, le=3600)
    stats_window_s: float = Field(default=60.0, gt=0)
    region: str = ""
    agent_name: str | None = None
    # Where a worker keeps the claim on its agent id (workers.identity), across restarts.
    agent_state_dir: Path = Field(
        default_factory=lambda: Path.home() / ".local" / "state" / "fleet" / "agents"
    )
    # Route only to the living (orchestrator.waiting): a ready task whose capability no
    # live agent serves waits in the orchestrator's state instead of its topic. False:
    # every task is dispatched at once, agents or not (the behaviour before agents).
    # On since the short fault run passes with it (its slow broker restarts came from
    # admin clients spinning while the broker was down: fleet.kafka.clients.admin).
    route_live_only: bool = True
    # Circuit breakers per capability (orchestrator.breaker): while one is open its tasks
    # wait like tasks without a live agent. Off by default: a capability that fails by
    # design (the fault runs' text.flaky fails every first attempt) would trip it; to be
    # set per capability in the routing policy (issue 12 item 10). The defaults are the
    # common practice for service breakers.
    breakers: bool = False
    breaker_failure_rate: float = Field(default=0.15, gt=0, lt=1)
    breaker_window_s: float = Field(default=300.0, gt=0)
    breaker_min_calls: int = Field(default=20, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, ge=0)
    breaker_half_open_calls: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _commit_interval_fits_the_transaction(self) -> Settings:
        # The commit itself may take seconds more; past transaction.timeout.ms the
        # coordinator aborts the transaction and fences the producer.
        timeout_ms = int(self.client_config.get("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS))
        interval_ms = self.orchestrator_commit_interval_ms
        if self.orchestrator_guarantee == "exactly_once" and interval_ms > timeout_ms // 2:
            raise ValueError(
                f"the orchestrator's commit interval ({interval_ms} ms) must be at most half "
                f"of transaction.timeout.ms ({timeout_ms} ms) with exactly_once"
            )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        values: dict[str, object] = {}
        simple = {
            "KAFKA_BOOTSTRAP_SERVERS": "bootstrap_servers",
            "FLEET_TOPIC_PREFIX": "topic_prefix",
            "FLEET_TOPOLOGY": "topology_file",
            "FLEET_MARKET_FILE": "market_file",
            "FLEET_SCHEMAS": "schemas_dir",
            "FLEET_KAFKA_VERSION": "kafka_version",
            "FLEET_KAFKA_CACHE": "kafka_cache_dir",
            "FLEET_KAFKA_HOME": "kafka_run_dir",
            "FLEET_LOG_FORMAT": "log_format",
            "FLEET_LOG_LEVEL": "log_level",
            "FLEET_CONNECT_TIMEOUT": "connect_timeout_s",
            "FLEET_ORCHESTRATOR_GUARANTEE": "orchestrator_guarantee",
            "FLEET_ORCHESTRATOR_COMMIT_INTERVAL_MS": "orchestrator_commit_interval_ms",
            "FLEET_ORCHESTRATOR_INSTANCE_ID": "orchestrator_instance_id",
            "FLEET_HEARTBEAT_S": "heartbeat_s",
            "FLEET_STATS_WINDOW_S": "stats_window_s",
            "FLEET_REGION": "region",
            "FLEET_AGENT_NAME": "agent_name",
            "FLEET_AGENT_STATE_DIR": "agent_state_dir",
            "FLEET_ROUTE_LIVE_ONLY": "route_live_only",
            "FLEET_BREAKERS": "breakers",
            "FLEET_BREAKER_FAILURE_RATE": "breaker_failure_rate",
            "FLEET_BREAKER_WINDOW_S": "breaker_window_s",
            "FLEET_BREAKER_MIN_CALLS": "breaker_min_calls",
            "FLEET_BREAKER_COOLDOWN_S": "breaker_cooldown_s",
            "FLEET_BREAKER_HALF_OPEN_CALLS": "breaker_half_open_calls",
        }
        for var, field in simple.items():
            if env.get(var):
                values[field] = env[var]
        values["client_config"] = {
            var[len(_CLIENT_PREFIX) :].lower().replace("_", "."): value
            for var, value in env.items()
            if var.startswith(_CLIENT_PREFIX)
        }
        settings = _validated(values, names={field: var for var, field in simple.items()})
        if not _TOPIC_PREFIX_RE.match(settings.topic_prefix):
            raise ConfigError(
                f"FLEET_TOPIC_PREFIX={settings.topic_prefix!r} may only hold letters, digits, "
                "'.', '_' and '-'"
            )
        return settings

    def orchestrator_member(self) -> str | None:
        """The group.instance.id and transactional id stem of this orchestrator instance
        (None: it has no stable name)."""
        if self.orchestrator_instance_id is None:
            return None
        return f"{self.topic_prefix}orchestrator-{self.orchestrator_instance_id}"

    def require_bootstrap(self) -> str:
        """The broker to connect to. Resolved once at the entry point (the `fleet` command
        finds a running local broker there); a process never looks for one itself."""
        if not self.bootstrap_servers:
            raise ConfigError(
                "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS, or start the local one with "
                "`fleet kafka start`"
            )
        return self.bootstrap_servers

    def with_bootstrap(self, bootstrap_servers: str) -> Settings:
        return self.model_copy(update={"bootstrap_servers": bootstrap_servers})

    def with_orchestrator(
        self,
        guarantee: str | None = None,
        commit_interval_ms: int | None = None,
        instance_id: str | None = None,
    ) -> Settings:
        """These settings with ``fleet orchestrator``'s flags applied (None: not given)."""
        flags = {
            "orchestrator_guarantee": ("--guarantee", guarantee),
            "orchestrator_commit_interval_ms": ("--commit-interval-ms", commit_interval_ms),
            "orchestrator_instance_id": ("--instance-id", instance_id),
        }
        values = self.model_dump()
        values.update({field: value for field, (_, value) in flags.items() if value is not None})
        return _validated(values, names={field: flag for field, (flag, _) in flags.items()})


def _validated(values: dict[str, object], names: dict[str, str]) -> Settings:
    """A Settings, or a ConfigError that names each bad value by the variable or flag it
    came from (``names``: field -> name) instead of a pydantic traceback."""
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            where = names.get(field, field)
            # A validator's own message, without pydantic's "Value error, " in front.
            reason = error["ctx"]["error"] if error["type"] == "value_error" else error["msg"]
            problems.append(f"{where}: {reason}" if where else str(reason))
        raise ConfigError("; ".join(problems)) from exc
