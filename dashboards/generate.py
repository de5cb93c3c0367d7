"""Grafana dashboards as code (grafana-foundation-sdk): ``python dashboards/generate.py`` rewrites the
JSON files beside this script; ``--check`` fails if they differ from what the code generates.

Every dashboard takes its Prometheus data source from the ``datasource`` template variable (no data
source UID is written anywhere) and its replicas from ``instance`` (one scrape target per replica,
or per worker: ``--workers N`` serves worker i's metrics on PORT+i). Rates use ``$__rate_interval``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

HERE = Path(__file__).resolve().parent
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'instance=~"$instance"'
RI = "$__rate_interval"


def rate(metric: str, by: str = "instance", extra: str = "") -> str:
    """Per-``by`` rate of a counter over the selected replicas."""
    sel = f"{SEL},{extra}" if extra else SEL
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{RI}]))"


def gauge(metric: str) -> str:
    return f"sum by (instance) ({metric}{{{SEL}}})"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    kind: str = "timeseries"  # or "stat"
    width: int = 12


def q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


# Per replica x: its rate of incoming datagrams. Jain's index (sum x)^2 / (n * sum x^2): 1 when all
# replicas take equal shares, 1/n when one takes everything.
_X = rate("trickles_packets_received_total")
_B = rate("trickles_sent_bytes_total")
ACTIONS = "trickles_trickle_actions_total"
JAIN = f"sum({_X})^2 / (count({_X}) * sum({_X}^2))"

DASHBOARDS: dict[str, tuple[str, tuple[PanelSpec, ...]]] = {
    "trickles-throughput": (
        "Trickles / Throughput",
        (
            PanelSpec(
                "Bytes sent per replica",
                "Bps",
                (q(rate("trickles_sent_bytes_total"), "{{instance}}"),),
            ),
            PanelSpec(
                "Bytes sent and received, total",
                "Bps",
                (
                    q(f"sum(rate(trickles_sent_bytes_total{{{SEL}}}[{RI}]))", "sent"),
                    q(f"sum(rate(trickles_received_bytes_total{{{SEL}}}[{RI}]))", "received"),
                ),
            ),
            PanelSpec(
                "Datagrams per second per replica",
                "pps",
                (
                    q(rate("trickles_packets_sent_total"), "{{instance}} out"),
                    q(rate("trickles_packets_received_total"), "{{instance}} in"),
                ),
            ),
            PanelSpec(
                "Requests per second by type",
                "reqps",
                (q(rate("trickles_requests_total", "type"), "{{type}}"),),
                "Datagrams by request type: syn opens, request clocks data, rto restarts after a timeout.",
            ),
            PanelSpec(
                "HTTP requests per second",
                "reqps",
                (q(rate("trickles_http_requests_total"), "{{instance}}"),),
            ),
            PanelSpec(
                "Send failures per second",
                "pps",
                (q(rate("trickles_send_failures_total", "reason"), "{{reason}}"),),
                "Datagrams the kernel refused (full send buffer): lost like any other packet.",
            ),
        ),
    ),
    "trickles-memory": (
        "Trickles / Memory",
        (
            PanelSpec(
                "Resident memory per replica",
                "bytes",
                (q(f"sum by (instance) (process_resident_memory_bytes{{{SEL}}})", "{{instance}}"),),
                "Current RSS (not the peak). Flat while clients and requests grow: no per-connection state.",
            ),
            PanelSpec(
                "Distinct active clients",
                "short",
                (q(f"sum by (instance) (trickles_active_clients{{{SEL}}})", "{{instance}}"),),
                "Client addresses seen in the last 30-60 s (HyperLogLog, about 2 % error). Summing "
                "replicas counts a client once per replica it reached.",
            ),
            PanelSpec(
                "Request rate",
                "reqps",
                (q(rate("trickles_packets_received_total"), "{{instance}}"),),
            ),
            PanelSpec(
                "Memory per active client",
                "bytes",
                (
                    q(
                        f"sum(process_resident_memory_bytes{{{SEL}}}) / "
                        f"clamp_min(sum(trickles_active_clients{{{SEL}}}), 1)",
                        "bytes per client",
                    ),
                ),
                "Falls as clients grow: memory is a constant, not a per-client cost.",
            ),
            PanelSpec(
                "Bounded state",
                "short",
                (
                    q(gauge("trickles_replay_filter_entries"), "{{instance}} replay filter"),
                    q(gauge("trickles_static_open_files"), "{{instance}} open files"),
                ),
            ),
            PanelSpec(
                "CPU per replica",
                "percentunit",
                (q(rate("process_cpu_seconds_total"), "{{instance}}"),),
            ),
        ),
    ),
    "trickles-protocol": (
        "Trickles / Protocol health",
        (
            PanelSpec(
                "Drops per second by reason",
                "pps",
                (q(rate("trickles_packets_dropped_total", "reason"), "{{reason}}"),),
                "Every dropped datagram is counted with a named reason; internal means a bug.",
            ),
            PanelSpec(
                "Retransmissions and timeout restarts",
                "pps",
                (
                    q(rate(ACTIONS, "action", 'action="retransmit"'), "retransmitted"),
                    q(rate("trickles_requests_total", "type", 'type="rto"'), "timeout requests"),
                    q(rate(ACTIONS, "action", 'action="terminate"'), "terminated"),
                ),
            ),
            PanelSpec(
                "Soft-state cache hit ratio",
                "percentunit",
                (
                    q(
                        f"sum(rate(trickles_cache_hits_total{{{SEL}}}[{RI}])) / "
                        f"(sum(rate(trickles_cache_hits_total{{{SEL}}}[{RI}])) + "
                        f"sum(rate(trickles_cache_misses_total{{{SEL}}}[{RI}])))",
                        "hit ratio",
                    ),
                ),
            ),
            PanelSpec(
                "Processing time per datagram",
                "s",
                tuple(
                    q(
                        f"histogram_quantile({p}, sum by (le) "
                        f"(rate(trickles_handle_seconds_bucket{{{SEL}}}[{RI}])))",
                        f"p{round(p * 100)}",
                    )
                    for p in (0.5, 0.9, 0.99)
                ),
                "Receive, step and send, from each batch's mean per datagram.",
            ),
            PanelSpec(
                "Busy share of the UDP loop",
                "percentunit",
                (q(rate("trickles_busy_seconds_total"), "{{instance}}"),),
            ),
            PanelSpec(
                "Build",
                "none",
                (
                    q(
                        f"count by (version, build, key_id) (trickles_build_info{{{SEL}}})",
                        "{{version}} {{build}} key {{key_id}}",
                    ),
                ),
                kind="stat",
            ),
        ),
    ),
    "trickles-cluster": (
        "Trickles / Cluster balance",
        (
            PanelSpec(
                "Share of incoming datagrams per replica",
                "percentunit",
                (q(f"{_X} / scalar(sum({_X}))", "{{instance}}"),),
            ),
            PanelSpec(
                "Jain's fairness index",
                "none",
                (q(JAIN, "fairness"),),
                "(sum x)^2 / (n sum x^2) over the replicas' datagram rates: 1 = perfectly even, "
                "1/n = one takes all.",
            ),
            PanelSpec(
                "Replicas up",
                "none",
                (q(f"sum(up{{{SEL}}})", "up"),),
                kind="stat",
            ),
            PanelSpec(
                "Share of bytes sent per replica",
                "percentunit",
                (q(f"{_B} / scalar(sum({_B}))", "{{instance}}"),),
            ),
        ),
    ),
}


def panel(spec: PanelSpec) -> timeseries.Panel | stat.Panel:
    p = timeseries.Panel() if spec.kind == "timeseries" else stat.Panel()
    p.title(spec.title).unit(spec.unit).datasource(DS).span(spec.width).height(8)
    if spec.description:
        p.description(spec.description)
    for i, qq in enumerate(spec.queries):
        target = prometheus.Dataquery().expr(qq.expr).legend_format(qq.legend).ref_id(chr(65 + i))
        p.with_target(target.datasource(DS))
    return p


def build(uid: str) -> dict[str, object]:
    title, panels = DASHBOARDS[uid]
    ds_var = dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
    inst = (
        dash.QueryVariable("instance")
        .label("Replica")
        .datasource(DS)
        .query("label_values(trickles_build_info, instance)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    d = (
        dash.Dashboard(title)
        .uid(uid)
        .tags(["trickles"])
        .refresh("10s")
        .time("now-30m", "now")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(ds_var)
        .with_variable(inst)
    )
    for spec in panels:
        d.with_panel(panel(spec))
    out: dict[str, object] = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    return out


def render(uid: str) -> str:
    return json.dumps(build(uid), indent=2, sort_keys=True) + "\n"


def expressions() -> Iterator[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) for every query of every panel, as committed."""
    for uid in DASHBOARDS:
        doc = json.loads((HERE / f"{uid}.json").read_text())
        for p in doc["panels"]:
            for t in p.get("targets", []):
                yield uid, p["title"], t["expr"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail if a committed JSON file is out of date")
    args = ap.parse_args(argv)
    stale = []
    for uid in DASHBOARDS:
        path, text = HERE / f"{uid}.json", render(uid)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python dashboards/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
