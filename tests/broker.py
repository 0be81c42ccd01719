"""A private Mosquitto broker for tests, a recording subscriber, and a throwaway TLS CA.

The broker is a real ``mosquitto -c conf`` process on a free loopback port; tests
stop it (SIGTERM, or SIGKILL), keep it away, and start it again on the same port
with the same persistence directory.
"""

from __future__ import annotations

import datetime
import getpass
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from helpers import free_port
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = "127.0.0.1"


def _program(name: str) -> str:
    """Find a mosquitto program: on PATH, or in /usr/sbin (not on a Debian user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise RuntimeError(f"{name} not found: install Debian's mosquitto (scripts/test.sh does)")
    return found


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA, the broker's certificate and key, and an unrelated CA."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """Make a CA, a server certificate for 127.0.0.1/localhost signed by it, and a second CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )

    def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = make_ca("labelcast test CA")
    _, other_cert = make_ca("some other CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca=folder / "ca.pem",
        cert=folder / "server.pem",
        key=folder / "server.key",
        other_ca=folder / "other-ca.pem",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.other_ca.write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, files.key)
    return files


class Broker:
    """A mosquitto process on a fixed loopback port that tests can stop and start again."""

    def __init__(
        self,
        folder: Path,
        *,
        tls: TlsFiles | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port()
        self.tls = tls
        self.users = users
        self.log_path = folder / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {HOST}",
            "persistence true",
            f"persistence_location {data}/",
            # Saves subscriptions and queued messages every second, and on SIGTERM.
            "autosave_interval 1",
            # A persistent subscriber that is away must not lose queued messages.
            "max_queued_messages 0",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # Run as whoever owns the test files (mosquitto drops root to "mosquitto").
            lines.append(f"user {getpass.getuser()}")
        if self.users:
            password_file = self.folder / "passwords"
            password_file.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    [_program("mosquitto_passwd"), "-b", str(password_file), user, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.cert}",
                f"keyfile {self.tls.key}",
            ]
        (self.folder / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and wait until its port accepts connections."""
        assert not self.running, "broker already running"
        self._process = subprocess.Popen(
            [_program("mosquitto"), "-c", str(self.folder / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop mosquitto with ``sig`` (SIGTERM saves its persistence, SIGKILL does not)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(sig)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def sink_config(self, prefix: str, **extra: Any) -> dict[str, Any]:
        """An mqtt sink config for this broker (host, port, prefix, quick reconnects)."""
        return {
            "type": "mqtt",
            "host": HOST,
            "port": self.port,
            "topic_prefix": prefix,
            "reconnect": {"min_s": 0.2, "max_s": 1.0},
            **extra,
        }


@dataclass(frozen=True)
class Received:
    """One message a Subscriber got."""

    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client in the test process that records every message on ``topics``.

    ``persistent``: an MQTT 5 session that outlives disconnects (clean_start false,
    session expiry 1 h), so the broker queues QoS 1 messages while it is away and
    after a broker restart (mosquitto's persistence keeps the session).
    """

    def __init__(
        self,
        broker: Broker,
        topics: list[str],
        *,
        persistent: bool = False,
        tls_ca: Path | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._topics = topics
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        if tls_ca is not None:
            self.client.tls_set_context(ssl.create_default_context(cafile=str(tls_ca)))
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        properties = None
        if persistent:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        self.client.connect(
            broker.host,
            broker.port,
            keepalive=10,
            clean_start=not persistent,
            properties=properties,
        )
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscriber could not subscribe"

    def _on_connect(self, client: paho.Client, u: Any, flags: Any, reason: Any, p: Any) -> None:
        if reason.is_failure:
            return
        if flags.session_present:
            self._subscribed.set()
            return
        client.subscribe([(topic, 1) for topic in self._topics])

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, u: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(
                Received(message.topic, bytes(message.payload), message.retain, time.monotonic())
            )

    def received(self, suffix: str = "") -> list[Received]:
        """Messages so far (optionally only those whose topic ends with ``suffix``)."""
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, condition: Callable[[list[Received]], bool], timeout: float) -> bool:
        """Wait until ``condition(messages)`` holds; return whether it did in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.received()):
                return True
            time.sleep(0.05)
        return condition(self.received())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained(broker: Broker, topic: str, timeout: float = 2.0, **login: Any) -> bytes | None:
    """The retained message of ``topic`` as a fresh subscriber sees it (None if none)."""
    subscriber = Subscriber(broker, [topic], **login)
    try:
        subscriber.wait_for(lambda messages: any(m.retain for m in messages), timeout)
        found = [m for m in subscriber.received() if m.retain]
        return found[-1].payload if found else None
    finally:
        subscriber.close()
