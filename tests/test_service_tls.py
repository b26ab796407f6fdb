"""The service over TLS, with secrets in its configuration that must never reach a log line.

Tansu speaks plaintext only, so a TLS-terminating proxy (Debian's ``stunnel4``) sits in front of it
and Tansu advertises the proxy's address: every client connection, bootstrap and after, goes through
TLS. The certificates are a throwaway CA, a server certificate for 127.0.0.1 and a client
certificate whose key is encrypted with a password (the ``ssl_key_password`` secret), made with
the ``cryptography`` package when installed, else the ``openssl`` command line. The test skips,
saying why, when stunnel (or both certificate makers) is missing; ``.ci/run`` installs stunnel4.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker_plugin.broker.embedded import EmbeddedBroker, find_free_port
from broker_plugin.stream.service import Service
from tests.kafka_helpers import unique_name
from tests.service_helpers import ServiceThread, alert_corpus, drain_topic, headers_of, make_config, produce

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

KEY_PASSWORD = "tls-key-pa55word-do-not-log"
SASL_PASSWORD = "sasl-s3cret-do-not-log"


def _stunnel() -> str:
    exe = shutil.which("stunnel4") or shutil.which("stunnel")
    if exe is None:
        pytest.skip("stunnel is not installed (apt-get install -y stunnel4): no TLS proxy for the embedded broker")
    return exe


def make_certificates(directory: Path, key_password: str) -> dict[str, Path]:
    """CA, server certificate (SAN 127.0.0.1, localhost) and a client certificate with an encrypted key."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available for test certificates")
        return _certificates_openssl(directory, key_password)
    return _certificates_cryptography(directory, key_password)


def _certificates_cryptography(d: Path, key_password: str) -> dict[str, Path]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool = False,
             san: list[x509.GeneralName] | None = None) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("bal-test-ca", ca_key, "bal-test-ca", ca_key, ca=True)
    server = cert("127.0.0.1", server_key, "bal-test-ca", ca_key,
                  san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client = cert("bal-client", client_key, "bal-test-ca", ca_key)
    pem = serialization.Encoding.PEM
    out = {"ca": d / "ca.pem", "server_cert": d / "server.pem", "server_key": d / "server.key",
           "client_cert": d / "client.pem", "client_key": d / "client.key"}
    out["ca"].write_bytes(ca.public_bytes(pem))
    out["server_cert"].write_bytes(server.public_bytes(pem))
    out["server_key"].write_bytes(server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    out["client_cert"].write_bytes(client.public_bytes(pem))
    out["client_key"].write_bytes(client_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(key_password.encode())))
    return out


def _certificates_openssl(d: Path, key_password: str) -> dict[str, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    run("req", "-x509", *ec, "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=bal-test-ca")
    run("req", *ec, "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "1", "-extfile", "san.cnf")
    run("req", *ec, "-keyout", "client.key", "-passout", f"pass:{key_password}", "-out", "client.csr",
        "-subj", "/CN=bal-client")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "client.pem", "-days", "1")
    return {"ca": d / "ca.pem", "server_cert": d / "server.pem", "server_key": d / "server.key",
            "client_cert": d / "client.pem", "client_key": d / "client.key"}


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, dict[str, Path], Path]]:
    """(broker advertising the TLS proxy, certificate paths, stunnel log)."""
    exe = _stunnel()
    certs = make_certificates(tmp_path, KEY_PASSWORD)
    proxy_port = find_free_port()
    stunnel_log = tmp_path / "stunnel.log"
    with EmbeddedBroker(advertised_port=proxy_port) as broker:
        conf = tmp_path / "stunnel.conf"
        conf.write_text(f"foreground = yes\npid =\ndebug = 5\n\n[kafka]\naccept = 127.0.0.1:{proxy_port}\n"
                        f"connect = 127.0.0.1:{broker.port}\ncert = {certs['server_cert']}\n"
                        f"key = {certs['server_key']}\n")
        with open(stunnel_log, "wb") as logf:
            proc = subprocess.Popen([exe, str(conf)], stdout=logf, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while "Configuration successful" not in stunnel_log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"stunnel did not start: {stunnel_log.read_text(errors='replace')[-1000:]}")
                time.sleep(0.05)
            with socket.socket() as s:  # listening
                s.settimeout(5)
                s.connect(("127.0.0.1", proxy_port))
            yield broker, certs, stunnel_log
        finally:
            proc.terminate()
            proc.wait(10)


class _RawCapture(logging.Handler):
    """Every record as its raw message plus every attribute (no scrubbing formatter in between)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage() + " " + json.dumps(vars(record), default=str))


def test_service_over_tls_never_logs_secrets(tls_broker: tuple[EmbeddedBroker, dict[str, Path], Path],
                                             shared_data: Path) -> None:
    broker, certs, stunnel_log = tls_broker
    security = {
        "security_protocol": "SSL",
        "ssl_ca_location": str(certs["ca"]),
        "ssl_certificate_location": str(certs["client_cert"]),
        "ssl_key_location": str(certs["client_key"]),
        "ssl_key_password": KEY_PASSWORD,
        "sasl_password": SASL_PASSWORD,  # not used by SSL, but configured: must be masked all the same
    }
    client = {"security.protocol": "SSL", "ssl.ca.location": str(certs["ca"]),
              "ssl.certificate.location": str(certs["client_cert"]), "ssl.key.location": str(certs["client_key"]),
              "ssl.key.password": KEY_PASSWORD}
    topic = unique_name("tls")
    alerts = [d for n, d in alert_corpus(shared_data, synthetic=0)[:12]]
    produce(broker.bootstrap, topic, [(None, d) for d in alerts], settings=client)  # auto-creates the topic
    cfg = make_config(broker.bootstrap, topic, kafka=security,
                      observability={"log_level": "DEBUG"})
    capture = _RawCapture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        with ServiceThread(Service(cfg)) as st:
            st.wait_outputs(len(alerts), timeout=40)
            assert st.stop() == 0
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    out = drain_topic(broker.bootstrap, cfg.kafka.output_topic, min_count=len(alerts), settings=client)
    assert len({headers_of(m)["bal_source"] for m in out}) == len(alerts)
    assert "accepted connection" in stunnel_log.read_text(errors="replace")  # the traffic went through TLS
    text = "\n".join(capture.lines)
    assert "service starting" in text and "***" in text  # the configuration was logged, redacted
    for secret in (KEY_PASSWORD, SASL_PASSWORD):
        assert secret not in text
    start = next(line for line in capture.lines if "service starting" in line)
    assert str(certs["client_key"]) in start  # paths stay visible: they help debugging
