"""deploy/: the compose file parses (``docker-compose config``, no daemon needed) with the topology the
README describes, and nginx's UDP stream proxy with the shipped config sprays a real transfer."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import trio

from trickles.server.cluster import probe

from .conftest import HOST, TRICKLES, ServerProcess, Site, free_port, run, stop_process, tail
from .test_cluster import download

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NGINX_STREAM = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def compose() -> list[str]:
    """The compose command (`.ci/run` installs Debian's docker-compose when neither is present)."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    raise AssertionError("neither docker-compose nor the docker compose plugin is installed (see .ci/run)")


def test_compose_file_is_valid_and_has_the_cluster_topology() -> None:
    cmd = [*compose(), "-f", str(DEPLOY / "docker-compose.yml")]
    r = run([*cmd, "config", "-q"])
    assert r.returncode == 0, r.stderr.decode()
    services = run([*cmd, "config", "--services"]).stdout.decode().split()
    assert sorted(services) == ["grafana", "prometheus", "replica1", "replica2", "replica3", "sprayer"]
    full = run([*cmd, "config"]).stdout.decode()
    assert full.count("/run/secrets/cluster_key") == 4  # the sprayer and three replicas
    assert full.count("condition: service_healthy") >= 4
    assert "protocol: udp" in full or "8080/udp" in full  # long or short port syntax
    assert "172.28.0.10" in full  # the address the replicas trust


def test_compose_mounts_the_shipped_prometheus_and_grafana_files() -> None:
    """Prometheus and Grafana get deploy/prometheus/, deploy/grafana/provisioning/ and dashboards/
    as they are in the repository: the provisioned dashboard path is where dashboards/ is mounted,
    and Prometheus scrapes every replica and the sprayer on the port their --metrics flags use."""
    full = run([*compose(), "-f", str(DEPLOY / "docker-compose.yml"), "config"]).stdout.decode()
    mounts = dict(re.findall(r"- (/[^:\s]+):(/[^:\s]+):ro", full))
    for host in mounts:
        assert Path(host).exists(), host
    by_target = {t: Path(h) for h, t in mounts.items()}
    prom = by_target["/etc/prometheus"]
    assert prom == DEPLOY / "prometheus"
    assert {"prometheus.yml", "rules.yml"} <= {p.name for p in prom.iterdir()}
    prov = by_target["/etc/grafana/provisioning"]
    assert prov == DEPLOY / "grafana" / "provisioning"
    # One data source and one dashboard provider: Grafana refuses two default data sources.
    (ds,) = (prov / "datasources").iterdir()
    (provider,) = (prov / "dashboards").iterdir()
    assert "url: http://prometheus:9090" in ds.read_text()
    (path,) = re.findall(r"path: (\S+)", provider.read_text())
    dashboards = by_target[path]
    assert dashboards == DEPLOY.parent / "dashboards" and list(dashboards.glob("*.json"))
    targets = set(re.findall(r"- (\w+:9100)", (prom / "prometheus.yml").read_text()))
    assert targets == {"replica1:9100", "replica2:9100", "replica3:9100", "sprayer:9100"}, targets
    assert len(re.findall(r"- --metrics\n\s*- 0.0.0.0:9100", full)) == 4  # 3 replicas and the sprayer


def test_nginx_udp_stream_proxy_sprays_a_transfer(site: Site, key_file: Path, tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists() and NGINX_STREAM.exists(), "install nginx-light libnginx-mod-stream"
    port = free_port(span=4)
    conf = (DEPLOY / "nginx-udp.conf").read_text()
    for i in range(4):
        conf = conf.replace(f"127.0.0.1:{8080 + i}", f"{HOST}:{port + i}")
    conf = re.sub(r"pid [^;]+;", f"pid {tmp_path / 'nginx.pid'};", conf)
    (tmp_path / "nginx.conf").write_text(conf)
    replicas = [
        ServerProcess(
            site.root, key_file, tmp_path / f"r{i}.log", "--trust-proxy", HOST, "--no-tcp", port=port + i
        )
        for i in (1, 2, 3)
    ]
    log = tmp_path / "nginx.log"
    proc = None
    try:
        for r in replicas:
            r.start(wait=False)
        for r in replicas:
            assert r.proc is not None
            while probe(f"{HOST}:{r.port}", 0.2) is None:
                assert r.proc.poll() is None, tail(r.log)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while not (tmp_path / "nginx.pid").exists():  # written once its sockets are bound
            assert proc.poll() is None and time.monotonic() < deadline, tail(log)
            time.sleep(0.05)
        before = [probe(f"{HOST}:{r.port}")["decapsulated"] for r in replicas]  # type: ignore[index]
        digest = trio.run(download, port, "/1m.bin")
        assert digest == site.digests["1m.bin"], tail(log)
        after = [probe(f"{HOST}:{r.port}")["decapsulated"] for r in replicas]  # type: ignore[index]
        served = [a - b for a, b in zip(after, before, strict=True)]
        print(f"\nnginx: request datagrams per replica for one connection: {served}")
        assert all(n > 0 for n in served), served
    finally:
        if proc is not None:
            stop_process(proc)
        for r in replicas:
            r.stop()


def test_probe_command_without_answer_exits_1() -> None:
    r = run([TRICKLES, "cluster", "probe", f"{HOST}:{free_port()}", "--timeout", "0.2"])
    assert r.returncode == 1 and b"no answer" in r.stdout
