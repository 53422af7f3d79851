"""A real Schema Registry for the integration tests: Apicurio Registry, built from Maven Central.

Karapace and Confluent's registry are not on the package registries these machines reach;
Apicurio Registry is, as the application's classes. ``apicurio/pom.xml`` turns them into a
runnable jar with Quarkus's build (see the notes there). The build runs once (Maven, a few
minutes on a cold cache) into ``~/.cache/livelearn/apicurio-registry-<version>``; each test
module then starts the jar (in-memory storage, ~15 s) on a free loopback port.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from streams.broker import free_port

VERSION = "2.4.2.Final"
HERE = Path(__file__).parent / "apicurio"
CCOMPAT = "/apis/ccompat/v7"


def cache_dir() -> Path:
    return Path(
        os.environ.get("LIVELEARN_TEST_REGISTRY_CACHE")
        or Path.home() / ".cache" / "livelearn" / f"apicurio-registry-{VERSION}"
    )


def build(timeout_s: float = 1500) -> Path:
    """The runnable jar (built once; concurrent builders wait on a file lock)."""
    target = cache_dir()
    jar = target / "registry-runner.jar"
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if jar.exists() and (target / "lib").is_dir():
            return jar
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("Maven (mvn) and Java 17+ are needed to build the test registry")
        work = target / "build"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(HERE, work)
        done = subprocess.run(
            [mvn, "-q", "-B", "-f", str(work / "pom.xml"), "package", "-DskipTests"],
            capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"building Apicurio Registry failed:\n{done.stdout[-4000:]}")
        shutil.rmtree(target / "lib", ignore_errors=True)
        shutil.move(str(work / "target" / "lib"), str(target / "lib"))
        shutil.move(str(work / "target" / "embedded-schema-registry-1-runner.jar"), str(jar))
        shutil.rmtree(work, ignore_errors=True)
        return jar


class ApicurioRegistry:
    """One registry process on a free loopback port; ``url`` is its Confluent-compatible API."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{CCOMPAT}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180) -> ApicurioRegistry:
        jar = build()
        java = shutil.which("java") or "java"
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
             "-jar", str(jar)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/subjects", timeout=5) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"registry not up in {timeout_s} s: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        self.log.close()
