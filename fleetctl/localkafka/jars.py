"""The local broker's distribution: Apache Kafka jars from Maven Central, cached per version.

No download of a tarball and no Kafka install: Maven resolves ``kafka_2.13`` with its
runtime dependencies into a libs dir under the cache, once per version, shared by every
run dir. Java 17+ runs the broker (and Maven itself), so both are checked first, with a
message that says how to get them or how to do without (an existing cluster).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from fleet.errors import LocalKafkaError
from fleetctl.localkafka.process import flock, since, tail

JAVA_MISSING = (
    "Java 17+ is required to run the local broker; install it "
    "(apt-get install openjdk-17-jre-headless) or set KAFKA_BOOTSTRAP_SERVERS to an "
    "existing cluster"
)
MVN_MISSING = (
    "Maven (mvn) is required to fetch the local broker's jars from Maven Central; install "
    "it (apt-get install maven) or set KAFKA_BOOTSTRAP_SERVERS to an existing cluster"
)
_MVN_ARGS = (  # the plugin version is pinned so a fetch is repeatable
    "-B", "-q", "-Dstyle.color=never", "-DincludeScope=runtime",
    "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
)  # fmt: skip
_COMPLETE_MARKER = ".complete"  # written last into a fetch, so a libs dir without it is junk

# kafka-tools-api 4.4.0 is not published on Central; the broker never needs it, so it is
# excluded for every version.
# log4j-slf4j-impl is the SLF4J 1.x binding Kafka needs, or the broker logs nothing.
_LOG4J_DEPS = "".join(
    f"<dependency><groupId>org.apache.logging.log4j</groupId><artifactId>{artifact}</artifactId>"
    "<version>2.25.1</version></dependency>"
    for artifact in ("log4j-slf4j-impl", "log4j-core", "log4j-api")
)
_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
  <groupId>fleet.local</groupId><artifactId>kafka-libs</artifactId><version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version><exclusions><exclusion><groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools-api</artifactId></exclusion></exclusions></dependency>
    {log4j}
  </dependencies>
</project>
"""


class KafkaJars:
    """The cached jars of one Kafka version, and the Java that runs them."""

    def __init__(self, version: str, libs_dir: Path, which: Callable[[str], str | None]) -> None:
        self.version = version
        self.libs_dir = libs_dir
        self._which = which  # injectable so "Java is missing" is testable without a broker
        self._java_path: str | None = None
        self._log = structlog.get_logger(__name__)

    def ensure(self) -> Path:
        """Return the libs dir of this version, fetching it with Maven first if needed."""
        if self._complete():
            return self.libs_dir
        self.java()  # Maven itself needs a JDK/JRE: say so before Maven does, less clearly
        mvn = self._tool("mvn", MVN_MISSING)
        self.libs_dir.parent.mkdir(parents=True, exist_ok=True)
        # Another process may be fetching the same version: wait for it, then re-check.
        with flock(self.libs_dir.parent / ".fetch.lock"):
            if self._complete():
                return self.libs_dir
            self._log.info(f"fetching Apache Kafka {self.version} jars from Maven Central")
            started = time.monotonic()
            with tempfile.TemporaryDirectory(dir=self.libs_dir.parent, prefix=".fetch-") as tmp:
                staged = Path(tmp) / "libs"
                pom = _POM.format(kafka=self.version, log4j=_LOG4J_DEPS)
                (Path(tmp) / "pom.xml").write_text(pom)
                argv = [mvn, *_MVN_ARGS, f"-DoutputDirectory={staged}"]
                done = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, check=False)
                if done.returncode != 0 or not any(staged.glob("kafka_2.13-*.jar")):
                    raise LocalKafkaError(
                        f"Maven could not fetch Apache Kafka {self.version} (exit "
                        f"{done.returncode}); check the version and your network:\n"
                        + tail(done.stdout + done.stderr)
                    )
                (staged / _COMPLETE_MARKER).write_text(self.version)
                # A stale, incomplete libs dir is moved aside first: rename cannot replace
                # a non-empty directory, and the new one must appear in a single step.
                if self.libs_dir.exists():
                    self.libs_dir.rename(Path(tmp) / "stale")
                staged.rename(self.libs_dir)
            jars = len(list(self.libs_dir.glob("*.jar")))
            self._log.info(f"cached {jars} jars in {self.libs_dir}", seconds=since(started))
        return self.libs_dir

    def _complete(self) -> bool:
        return (self.libs_dir / _COMPLETE_MARKER).is_file() and any(
            self.libs_dir.glob("kafka_2.13-*.jar")
        )

    def _tool(self, name: str, missing: str) -> str:
        path = self._which(name)
        if path is None:
            raise LocalKafkaError(missing)
        return path

    def java(self) -> str:
        """The path of a Java 17+ (checked once), or a LocalKafkaError saying how to get one."""
        if self._java_path is not None:
            return self._java_path
        java = self._tool("java", JAVA_MISSING)
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
        if match:
            major = int(match[2] or 0) if match[1] == "1" else int(match[1])  # "1.8" is 8
            if major < 17:
                raise LocalKafkaError(f"found Java {major} at {java}; " + JAVA_MISSING)
        self._java_path = java
        return java
