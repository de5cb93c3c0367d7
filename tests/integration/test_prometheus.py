"""A real Prometheus (Debian's ``prometheus`` package) scraping a real ``trickles serve --workers 2``.

The deploy/ config and rules pass ``promtool``; a Prometheus configured the same way (same job,
rules file, one target per worker port) scrapes both workers every 250 ms while clients download.
Then: the figures Prometheus holds are exactly what the server reports and agree with what the
clients counted; every PromQL expression of every dashboard panel, with template variables
substituted as Grafana would, parses and returns finite data over the traffic window.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from trickles.client.trickles_transport import TricklesTransport

from ..server.test_dashboards import load_generator
from .conftest import HOST, Site, free_port, running_server, stop_process, tail, wait_tcp

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SCRAPE_S = 0.5  # busy workers answer a scrape within this (the timeout equals the interval)
STEP_S = 1.0
# Grafana's $__rate_interval: max($__interval + scrape interval, 4 * scrape interval).
RATE_INTERVAL = f"{int(max(STEP_S + SCRAPE_S, 4 * SCRAPE_S) * 1000)}ms"
FILES = ["1m.bin", "1m.bin", "1m.bin", "mss+1.bin", "index.html", "sub/nested.txt"]


def grafana_substitute(expr: str) -> str:
    """What Grafana sends for our variables: instance = All (its allValue ``.*``)."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$instance", ".*")


def api(port: int, path: str, **params: str) -> Any:
    url = f"http://{HOST}:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{path} {params}: HTTP {e.code}: {e.read().decode(errors='replace')}") from None
    assert body["status"] == "success", body
    return body["data"]


def scalar(port: int, expr: str) -> float:
    res = api(port, "query", query=expr)["result"]
    assert len(res) == 1, (expr, res)
    return float(res[0]["value"][1])


def direct(ports: list[int], name: str, **labels: str) -> float:
    """The sum of a sample over the workers' own /metrics pages."""
    total = 0.0
    for p in ports:
        with urllib.request.urlopen(f"http://{HOST}:{p}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
    return total


def write_config(tmp: Path, targets: list[str]) -> Path:
    """The deploy/ config with loopback targets and a test-sized scrape interval (JSON is YAML)."""
    deploy = (REPO / "deploy" / "prometheus" / "prometheus.yml").read_text()
    assert "job_name: trickles" in deploy and "rule_files:" in deploy
    shutil.copy(REPO / "deploy" / "prometheus" / "rules.yml", tmp / "rules.yml")
    cfg = {
        "global": {"scrape_interval": f"{int(SCRAPE_S * 1000)}ms", "evaluation_interval": "500ms"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [{"job_name": "trickles", "static_configs": [{"targets": targets}]}],
    }
    path = tmp / "prometheus.yml"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def promtool(*args: str) -> None:
    r = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}{r.stderr}"


@contextlib.contextmanager
def running_prometheus(config: Path, tmp: Path) -> Iterator[int]:
    port = free_port()
    log = tmp / "prometheus.log"
    cmd = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address={HOST}:{port}",
        "--log.level=warn",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_tcp(port, proc, log)
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready:\n{tail(log)}"
            time.sleep(0.1)
        yield port
    finally:
        stop_process(proc)


async def download(port: int, name: str, client: dict[str, int]) -> None:
    conn = await TricklesTransport(probe_timeout=5).connect(HOST, port, timeout=5)
    try:
        resp = await conn.request("GET", f"/{name}", [])
        h = hashlib.sha256()
        async for chunk in resp.body:
            h.update(chunk)
            client["bytes"] += len(chunk)
        assert resp.status == 200
    finally:
        await conn.aclose()
    st = conn.ep.conn.stats
    client["packets"] += st.packets_received
    client["requests"] += st.requests_sent
    client["datagram_bytes"] += st.bytes_received
    client["connections"] += 1


def wait_for_first_scrapes(prom: int, n: int) -> None:
    deadline = time.monotonic() + 15
    while len(api(prom, "query", query='up{job="trickles"} == 1')["result"]) < n:
        assert time.monotonic() < deadline, "prometheus never scraped every worker"
        time.sleep(0.1)


def wait_until_scraped(prom: int, ports: list[int], name: str) -> float:
    """Poll until Prometheus' latest value of ``sum(name)`` equals the workers' own figure."""
    want = direct(ports, name)
    deadline = time.monotonic() + 10
    while True:
        res = api(prom, "query", query=f'sum({name}{{job="trickles"}})')["result"]
        got = float(res[0]["value"][1]) if res else None
        if got == want:
            return want
        if time.monotonic() > deadline:
            targets = api(prom, "targets")["activeTargets"]
            health = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
            raise AssertionError(f"{name}: prometheus has {got}, the workers {want}; targets {health}")
        time.sleep(0.1)


async def test_prometheus_scrapes_true_figures_and_every_panel_has_data(
    site: Site, key_file: Path, tmp_path: Path
) -> None:
    promtool("check", "config", str(REPO / "deploy" / "prometheus" / "prometheus.yml"))
    promtool("check", "rules", str(REPO / "deploy" / "prometheus" / "rules.yml"))
    mport = free_port(span=2)
    ports = [mport, mport + 1]
    config = write_config(tmp_path, [f"{HOST}:{p}" for p in ports])
    promtool("check", "config", str(config))
    extra = ("--workers", "2", "--metrics", f"{HOST}:{mport}")
    with running_server(site, key_file, tmp_path / "server.log", *extra) as srv:
        assert srv.proc is not None
        for p in ports:
            wait_tcp(p, srv.proc, srv.log)
        with running_prometheus(config, tmp_path) as prom:
            wait_for_first_scrapes(prom, len(ports))
            t_start = time.time()
            client = dict.fromkeys(["bytes", "packets", "connections", "requests", "datagram_bytes"], 0)
            rounds = 0
            with trio.fail_after(60):
                # Traffic over several scrapes (so rates exist), bounded in rounds and time.
                while rounds < 10 and (rounds < 2 or time.time() - t_start < 2.5):
                    async with trio.open_nursery() as nursery:
                        for name in FILES:
                            nursery.start_soon(download, srv.port, name, client)
                    rounds += 1
            await trio.sleep(2 * SCRAPE_S)
            # Every datagram a client sent reached the server and was counted: one SYN, its
            # requests and one CLOSE per connection.
            received = wait_until_scraped(prom, ports, "trickles_packets_received_total")
            assert received == client["requests"] + 2 * client["connections"], (received, client)
            conns = client["connections"]
            assert conns == rounds * len(FILES)
            for rtype, want in (("syn", conns), ("close", conns), ("request|rto|regen", client["requests"])):
                assert scalar(prom, f'sum(trickles_requests_total{{type=~"{rtype}"}})') == want, rtype
            # The server sent what the clients received plus what was still in flight when each
            # client, done, closed its socket.
            sent = wait_until_scraped(prom, ports, "trickles_packets_sent_total")
            assert client["packets"] <= sent <= client["packets"] + 400 * conns, (sent, client)
            sent_bytes = wait_until_scraped(prom, ports, "trickles_sent_bytes_total")
            assert client["datagram_bytes"] <= sent_bytes
            body = rounds * sum((site.root / n).stat().st_size for n in FILES)
            assert client["bytes"] == body < sent_bytes
            assert scalar(prom, 'sum(up{job="trickles"})') == 2
            assert scalar(prom, "sum(trickles_http_requests_total)") == conns
            assert scalar(prom, "sum(trickles_packets_dropped_total)") == 0
            clients = scalar(prom, "sum(trickles_active_clients)")
            assert abs(clients - conns) <= 0.1 * conns  # one address per connection, each on one worker
            rss = scalar(prom, "min(process_resident_memory_bytes)")
            assert 10 << 20 < rss < 500 << 20
            assert scalar(prom, 'count(trickles_build_info{key_id="1",build=~"pure|compiled"})') == 2
            assert scalar(prom, "sum(trickles_handle_seconds_count)") == scalar(
                prom, "sum(trickles_packets_received_total)"
            )
            await trio.sleep(2 * SCRAPE_S)  # a rule evaluation after the last scrape
            check_every_panel(prom, t_start, time.time())


def check_every_panel(prom: int, start: float, end: float) -> None:
    gen = load_generator()
    exprs = list(gen.expressions())
    assert len(exprs) >= 20
    empty = []
    for uid, title, expr in exprs:
        query = grafana_substitute(expr)
        data = api(prom, "query_range", query=query, start=str(start), end=str(end), step=str(STEP_S))
        values = [float(v) for series in data["result"] for _, v in series["values"]]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{uid} / {title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert scalar(prom, "count(instance:trickles_packets_received:rate1m)") == 2  # recording rules run
