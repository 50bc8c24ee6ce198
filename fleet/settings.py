"""The one settings object, built at the entry point from the environment.

Nothing in the product reads ``os.environ`` except :meth:`Settings.from_env`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.errors import ConfigError

DEFAULT_KAFKA_VERSION = "4.4.0"

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

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        values: dict[str, object] = {}
        simple = {
            "KAFKA_BOOTSTRAP_SERVERS": "bootstrap_servers",
            "FLEET_TOPIC_PREFIX": "topic_prefix",
            "FLEET_TOPOLOGY": "topology_file",
            "FLEET_SCHEMAS": "schemas_dir",
            "FLEET_KAFKA_VERSION": "kafka_version",
            "FLEET_KAFKA_CACHE": "kafka_cache_dir",
            "FLEET_KAFKA_HOME": "kafka_run_dir",
            "FLEET_LOG_FORMAT": "log_format",
            "FLEET_LOG_LEVEL": "log_level",
            "FLEET_CONNECT_TIMEOUT": "connect_timeout_s",
        }
        for var, field in simple.items():
            if env.get(var):
                values[field] = env[var]
        values["client_config"] = {
            var[len(_CLIENT_PREFIX) :].lower().replace("_", "."): value
            for var, value in env.items()
            if var.startswith(_CLIENT_PREFIX)
        }
        settings = cls.model_validate(values)
        if not _TOPIC_PREFIX_RE.match(settings.topic_prefix):
            raise ConfigError(
                f"FLEET_TOPIC_PREFIX={settings.topic_prefix!r} may only hold letters, digits, "
                "'.', '_' and '-'"
            )
        return settings

    def with_bootstrap(self, bootstrap_servers: str) -> Settings:
        return self.model_copy(update={"bootstrap_servers": bootstrap_servers})
