"""The embedded local broker: Apache Kafka jars from Maven Central, run as a detached JVM.

This is the zero-setup default (DESIGN §9): no Docker, only Java 17+ and Maven. The jars
are cached per version and shared by every run dir; a run dir holds one broker (its
config, data, logs, pid and bootstrap files), so tests use their own run dir and never
touch a user's broker.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from confluent_kafka.admin import AdminClient

from fleet.errors import LocalKafkaError
from fleet.settings import Settings

_JAVA_MISSING = (
    "Java 17+ is required to run the local broker; install it "
    "(apt-get install openjdk-17-jre-headless) or set KAFKA_BOOTSTRAP_SERVERS to an "
    "existing cluster"
)
_MVN_MISSING = (
    "Maven (mvn) is required to fetch the local broker's jars from Maven Central; install "
    "it (apt-get install maven) or set KAFKA_BOOTSTRAP_SERVERS to an existing cluster"
)
_MVN_ARGS = (  # the plugin version is pinned so a fetch is repeatable
    "-B", "-q", "-Dstyle.color=never", "-DincludeScope=runtime",
    "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
)  # fmt: skip
_COMPLETE_MARKER = ".complete"  # written last into a fetch, so a libs dir without it is junk

# kafka-tools-api 4.4.0 is not published on Central; the broker runs fine without it.
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

# Single-node KRaft with a static quorum. Internal topics get few partitions and RF 1 so
# the broker starts fast and transactions/share groups work on one node; the small dedupe
# buffer keeps the cleaner inside a 512 MiB heap. The product creates its topics itself.
_SERVER_PROPERTIES = """process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{cport}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=2097152
"""

# INFO to a size-capped file so a long-lived dev broker cannot fill the disk; the request
# logger is chatty at INFO and says nothing useful for a local broker.
_LOG4J2_PROPERTIES = """status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.network.name = kafka.network.RequestChannel$
logger.network.level = warn
"""


@dataclass(frozen=True)
class BrokerStatus:
    """A live local broker, as found in a run dir."""

    pid: int
    bootstrap: str
    version: str
    run_dir: Path


class LocalKafka:
    """Fetch, start, find and stop the single-node broker of one run dir."""

    def __init__(
        self, settings: Settings, *, which: Callable[[str], str | None] = shutil.which
    ) -> None:
        self.version = settings.kafka_version
        self.libs_dir = settings.kafka_cache_dir.expanduser().resolve() / self.version / "libs"
        self.run_dir = settings.kafka_run_dir.expanduser().resolve()
        self._which = which  # injectable so "Java is missing" is testable without a broker
        self._java_path: str | None = None
        self._log = structlog.get_logger(__name__)
        self.log_file = self.run_dir / "server.log"
        self._console_file = self.run_dir / "console.log"  # the JVM's own stdout/stderr
        self._pid_file = self.run_dir / "broker.pid"
        self._bootstrap_file = self.run_dir / "bootstrap"
        self._props_file = self.run_dir / "server.properties"

    # -- jars --------------------------------------------------------------------------
    def ensure_jars(self) -> Path:
        """Return the libs dir of this version, fetching it with Maven first if needed."""
        if self._jars_complete():
            return self.libs_dir
        self._java()  # Maven itself needs a JDK/JRE: say so before Maven does, less clearly
        mvn = self._tool("mvn", _MVN_MISSING)
        self.libs_dir.parent.mkdir(parents=True, exist_ok=True)
        # Another process may be fetching the same version: wait for it, then re-check.
        with _flock(self.libs_dir.parent / ".fetch.lock"):
            if self._jars_complete():
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
                        + _tail(done.stdout + done.stderr)
                    )
                (staged / _COMPLETE_MARKER).write_text(self.version)
                # A stale, incomplete libs dir is moved aside first: rename cannot replace
                # a non-empty directory, and the new one must appear in a single step.
                if self.libs_dir.exists():
                    self.libs_dir.rename(Path(tmp) / "stale")
                staged.rename(self.libs_dir)
            jars = len(list(self.libs_dir.glob("*.jar")))
            self._log.info(f"cached {jars} jars in {self.libs_dir}", seconds=_since(started))
        return self.libs_dir

    def _jars_complete(self) -> bool:
        return (self.libs_dir / _COMPLETE_MARKER).is_file() and any(
            self.libs_dir.glob("kafka_2.13-*.jar")
        )

    def _tool(self, name: str, missing: str) -> str:
        path = self._which(name)
        if path is None:
            raise LocalKafkaError(missing)
        return path

    def _java(self) -> str:
        if self._java_path is not None:
            return self._java_path
        java = self._tool("java", _JAVA_MISSING)
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
        if match:
            major = int(match[2] or 0) if match[1] == "1" else int(match[1])  # "1.8" is 8
            if major < 17:
                raise LocalKafkaError(f"found Java {major} at {java}; " + _JAVA_MISSING)
        self._java_path = java
        return java

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout_s: float = 60) -> str:
        """Start the broker of this run dir (or find it running); return its bootstrap."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # The lock makes concurrent starts (two CLIs, parallel test sessions sharing a run
        # dir) end with one broker: the second caller finds the first one's broker alive.
        with _flock(self.run_dir / ".lock"):
            running = self.status()
            if running is not None:
                if _answers(running.bootstrap, timeout_s=min(timeout_s, 10.0)):
                    return running.bootstrap
                self._log.warning(f"broker pid {running.pid} is not answering; restarting it")
                self._stop_locked(running, timeout_s=30.0)
            return self._start_fresh(timeout_s)

    def _start_fresh(self, timeout_s: float) -> str:
        java = self._java()
        libs = self.ensure_jars()
        started = time.monotonic()
        port, cport = _free_ports(2)
        bootstrap = f"127.0.0.1:{port}"
        data = self.run_dir / "data"
        # Fresh data and a new cluster id on every start: a dir formatted for another
        # cluster id refuses to start, and leftovers from a crashed run prove nothing.
        shutil.rmtree(data, ignore_errors=True)
        self._pid_file.unlink(missing_ok=True)
        self._bootstrap_file.unlink(missing_ok=True)
        self._props_file.write_text(_SERVER_PROPERTIES.format(port=port, cport=cport, data=data))
        log4j = self.run_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2_PROPERTIES.format(log=self.log_file))
        classpath = f"{libs}/*"  # java expands the wildcard itself
        cluster_id = _cluster_id()
        fmt = [java, "-cp", classpath, "kafka.tools.StorageTool", "format"]
        fmt += ["-t", cluster_id, "-c", str(self._props_file)]
        done = subprocess.run(fmt, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise LocalKafkaError(
                "formatting the local broker's storage failed:\n" + _tail(done.stdout + done.stderr)
            )
        self._bootstrap_file.write_text(f"{bootstrap}\n")
        return self._launch(bootstrap, started, timeout_s)

    def restart(self, down_s: float = 0.0, timeout_s: float = 60) -> str:
        """Stop the running broker, stay down ``down_s``, start it on the same data.

        Same cluster id, topics, offsets and port, so running clients reconnect by
        themselves: this is a broker restart as operators do it, for fault tests.
        """
        with _flock(self.run_dir / ".lock"):
            running = self.status()
            if running is None:
                raise LocalKafkaError(f"no local broker is running in {self.run_dir} to restart")
            self._stop_locked(running, timeout_s=30.0)
            time.sleep(down_s)
            self._bootstrap_file.write_text(f"{running.bootstrap}\n")
            return self._launch(running.bootstrap, time.monotonic(), timeout_s)

    def _launch(self, bootstrap: str, started: float, timeout_s: float) -> str:
        """Run the JVM on the run dir's config and storage; wait until it answers."""
        java = self._java()
        classpath = f"{self.ensure_jars()}/*"  # java expands the wildcard itself
        log4j = self.run_dir / "log4j2.properties"
        argv = [java, "-Xms256m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
        # These two properties tag the process, so status() can tell it from a reused pid.
        argv += [f"-Dfleet.kafka.version={self.version}", f"-Dfleet.run.dir={self.run_dir}"]
        argv += [f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={self.run_dir}"]
        argv += ["-cp", classpath, "kafka.Kafka", str(self._props_file)]
        pid = self._spawn_detached(argv)
        self._pid_file.write_text(f"{pid}\n")
        self._log.info(f"waiting for Apache Kafka {self.version} on {bootstrap}", pid=pid)
        self._wait_ready(pid, bootstrap, time.monotonic() + timeout_s)
        self._log.info(
            f"local broker ready on {bootstrap}", seconds=_since(started), logs=str(self.log_file)
        )
        return bootstrap

    def _spawn_detached(self, argv: list[str]) -> int:
        """Run argv in the background of a throwaway shell, in a new session.

        The shell exits at once, so the broker is never our child: it outlives the CLI,
        leaves no zombie for us to reap and no Popen object to warn on garbage collection.
        """
        script = 'log=$1; shift; "$@" >"$log" 2>&1 </dev/null & echo $!'
        out = subprocess.run(
            ["/bin/sh", "-c", script, "sh", str(self._console_file), *argv],
            cwd=self.run_dir,
            capture_output=True,
            text=True,
            check=True,
            start_new_session=True,
        )
        return int(out.stdout.strip())

    def _wait_ready(self, pid: int, bootstrap: str, deadline: float) -> None:
        # With a fixed port the listener opens only once the broker is unfenced, so a
        # TCP connect plus a metadata answer means it is ready for clients.
        while time.monotonic() < deadline:
            if not self._is_ours(pid):
                self._pid_file.unlink(missing_ok=True)
                self._bootstrap_file.unlink(missing_ok=True)
                raise LocalKafkaError(
                    f"the local broker exited during start-up; last lines of its logs "
                    f"({self.run_dir}):\n{self._log_tail()}"
                )
            if _answers(bootstrap, timeout_s=min(5.0, max(deadline - time.monotonic(), 0.5))):
                return
            time.sleep(0.2)
        self._stop_locked(BrokerStatus(pid, bootstrap, self.version, self.run_dir), 10.0)
        raise LocalKafkaError(
            f"the local broker did not answer on {bootstrap} in time; last lines of its "
            f"logs ({self.run_dir}):\n{self._log_tail()}"
        )

    def stop(self, timeout_s: float = 30) -> bool:
        """Stop this run dir's broker; return whether one was running."""
        if not self.run_dir.is_dir():
            return False
        with _flock(self.run_dir / ".lock"):
            running = self.status()
            if running is None:
                self._pid_file.unlink(missing_ok=True)
                self._bootstrap_file.unlink(missing_ok=True)
                return False
            self._stop_locked(running, timeout_s)
            return True

    def _stop_locked(self, running: BrokerStatus, timeout_s: float) -> None:
        self._log.info(f"stopping local broker pid {running.pid}", grace_s=timeout_s)
        # SIGTERM makes Kafka shut down cleanly; SIGKILL only after the grace period.
        if not self._signal_and_wait(running.pid, signal.SIGTERM, timeout_s):
            self._log.warning(f"broker pid {running.pid} still running; killing it")
            if not self._signal_and_wait(running.pid, signal.SIGKILL, 10.0):
                raise LocalKafkaError(f"could not stop the local broker (pid {running.pid})")
        self._pid_file.unlink(missing_ok=True)
        self._bootstrap_file.unlink(missing_ok=True)

    def _signal_and_wait(self, pid: int, sig: signal.Signals, wait_s: float) -> bool:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_s
        while self._is_ours(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def status(self) -> BrokerStatus | None:
        """The broker of this run dir if its process is alive, else None."""
        try:
            pid = int(self._pid_file.read_text().strip())
            bootstrap = self._bootstrap_file.read_text().strip()
        except (OSError, ValueError):
            return None
        args = _cmdline(pid)
        if not self._is_ours(pid, args):
            return None
        version = next(
            (a.split("=", 1)[1] for a in args if a.startswith("-Dfleet.kafka.version=")),
            self.version,
        )
        return BrokerStatus(pid=pid, bootstrap=bootstrap, version=version, run_dir=self.run_dir)

    def _is_ours(self, pid: int, args: list[str] | None = None) -> bool:
        # A pid alone is not proof: after a reboot or a crash the number may belong to
        # another process. Ours runs kafka.Kafka tagged with this run dir. (A zombie has
        # an empty command line, so an exited broker counts as gone.)
        args = _cmdline(pid) if args is None else args
        return "kafka.Kafka" in args and f"-Dfleet.run.dir={self.run_dir}" in args

    def _log_tail(self) -> str:
        # The first ERROR is usually the cause; the tail is mostly the shutdown that follows.
        files = [f for f in (self._console_file, self.log_file) if f.is_file()]
        text = "\n".join(f.read_text(errors="replace") for f in files)
        first = next((line for line in text.splitlines() if " ERROR " in line), "")
        return (f"first error: {first}\n" if first else "") + (_tail(text) or "(no log output)")


def _cmdline(pid: int) -> list[str]:
    """The argv of a process, or [] if it is gone (or a zombie)."""
    proc = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            return proc.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return []
    # No /proc (macOS): ps prints the command line joined by spaces, good enough here.
    out = subprocess.run(
        ["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return out.stdout.split()


def _answers(bootstrap: str, timeout_s: float) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=min(timeout_s, 2.0)):
            pass
    except OSError:
        return False
    # log_level 0 keeps librdkafka quiet about the refused connections of a starting broker.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        return bool(admin.list_topics(timeout=timeout_s).brokers)
    except Exception:  # noqa: BLE001 - any failure here just means "not ready yet"
        return False


def _free_ports(count: int) -> list[int]:
    # Hold all sockets open until every port is picked, so the same port is not returned
    # twice; the kernel does not hand a just-released ephemeral port out again at once.
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _cluster_id() -> str:
    while True:  # Kafka's own rule: a leading '-' would read as a command-line option
        candidate = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)
