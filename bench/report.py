#!/usr/bin/env python3
"""Turns bench/run.sh's raw results (one JSON object per line) into one table
with same-run ratios, and writes the JSON and Markdown reports.

A scenario measured in several rounds shows, for each figure, its median over
the rounds (each figure separately); the JSON keeps every round."""

import argparse
import json
import statistics
import sys

MIB = 1024.0


def load(path):
    runs = {}
    raw = []
    with open(path) as lines:
        for line in lines:
            if line.strip():
                record = json.loads(line)
                raw.append(record)
                runs.setdefault(record["scenario"], {}).setdefault(record["target"], []).append(record)
    return runs, raw


def upstream_requests(record):
    mock = record.get("mock") or {}
    try:
        return mock["after"]["requests"] - mock["before"]["requests"]
    except (KeyError, TypeError):
        return None


def proxy(record, field):
    return (record.get("proxy") or {}).get(field)


def passthrough_metrics(record):
    load = record["load"]
    seconds = load["duration_us"] / 1e6
    cpu = proxy(record, "cpu_s")
    errors = sum(load["errors"].values())
    return {
        "req/s": load["requests"] / seconds,
        "p50 ms": load["latency_us"]["p50"] / 1e3,
        "p99 ms": load["latency_us"]["p99"] / 1e3,
        "proxy CPU µs/req": cpu / load["requests"] * 1e6 if cpu is not None else None,
        # What one core would serve if the proxy had it to itself: the figure
        # that the load side and other processes on the machine disturb least.
        "req/s per proxy CPU-second": load["requests"] / cpu if cpu else None,
        "errors": errors,
        "other processes on proxy CPU, s": proxy(record, "cpu0_other_s"),
    }


def ttft_metrics(record):
    first = record["load"]["first_event_ms"]
    return {"p50 ms": first.get("p50"), "p99 ms": first.get("p99"), "failures": record["load"]["failures"]}


def stream_metrics(record):
    load = record["load"]
    peak, idle = proxy(record, "peak_rss_kib"), proxy(record, "idle_rss_kib")
    clients = load["clients"]
    return {
        "complete": load["complete"],
        "distinct bodies": load["distinct_bodies"],
        "upstream requests": upstream_requests(record),
        "delivery p50 ms": load["delivery_ms"].get("p50"),
        "delivery p99 ms": load["delivery_ms"].get("p99"),
        "delivery max ms": load["delivery_ms"].get("max"),
        "replayed events": load["replayed_events"],
        "proxy CPU s": proxy(record, "cpu_s"),
        "peak RSS MiB": peak / MIB if peak is not None else None,
        "KiB per client": (peak - idle) / clients if peak is not None else None,
        "load-gen CPU s": load["loadgen_cpu_s"],
        "other processes on proxy CPU, s": proxy(record, "cpu0_other_s"),
    }


def cancel_metrics(record):
    cancel = record["load"]["cancel_ms"]
    return {
        "p50 ms": cancel.get("p50"),
        "p99 ms": cancel.get("p99"),
        "max ms": cancel.get("max"),
        "failed rounds": len(record["load"]["failures"]),
    }


def startup_metrics(record):
    load = record["load"]
    return {"ready p50 ms": load["ready_ms"].get("p50"), "ready max ms": load["ready_ms"].get("max"),
            "idle RSS MiB": load["idle_rss_kib_median"] / MIB}


def fmt(value):
    if value is None:
        return "—"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def ratio(a, b):
    if a is None or b is None or not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return None
    return a / b


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--json", required=True)
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--meta", action="append", default=[])
    args = parser.parse_args()

    runs, raw = load(args.results)
    meta = dict(item.split("=", 1) for item in args.meta)
    alt_label = meta.get("alt") or ""
    targets = ["direct", "nginx", "chorus"] + (["chorus-alt"] if alt_label else [])
    # The fan-out floor (loadgen broadcast): the least a fan-out costs here.
    if any("floor" in per_target for per_target in runs.values()):
        targets.append("floor")

    rows = []
    # (scenario, target, metric) -> [min, max] over the rounds
    spread = {}

    def add(scenario, metric, values, target=None, verdict=None):
        chorus = values.get("chorus")
        row = {
            "scenario": scenario,
            "metric": metric,
            "values": values,
            "chorus/direct": ratio(chorus, values.get("direct")),
            "chorus/nginx": ratio(chorus, values.get("nginx")),
            "target": target,
            "met": verdict,
        }
        if alt_label:
            row["alt/chorus"] = ratio(values.get("chorus-alt"), chorus)
        rows.append(row)

    def metrics_of(scenario, extract):
        """Each target's figures: the median over its rounds, figure by figure."""
        out = {}
        for target, records in runs.get(scenario, {}).items():
            per_round = []
            for record in records:
                try:
                    per_round.append(extract(record))
                except (KeyError, TypeError, ZeroDivisionError) as error:
                    print(f"report: {scenario}/{target}: {error!r}", file=sys.stderr)
            if not per_round:
                continue
            medians = {}
            for name in per_round[0]:
                values = [figures[name] for figures in per_round if figures.get(name) is not None]
                medians[name] = statistics.median(values) if values else None
                if medians[name] is not None and all(isinstance(v, int) for v in values):
                    medians[name] = int(medians[name])
                if len(values) > 1:
                    spread[(scenario, target, name)] = [min(values), max(values)]
            out[target] = medians
        return out

    # 1. passthrough, over HTTP/1.1 (the scenario the targets are set for)
    # and over HTTP/2 with prior knowledge
    passthrough_figures = ["req/s", "p50 ms", "p99 ms", "proxy CPU µs/req", "req/s per proxy CPU-second",
                           "errors", "other processes on proxy CPU, s"]
    for name, title, with_targets in [
        ("passthrough", "passthrough: 64 conns, distinct ~1 KiB POSTs", True),
        ("h2", "passthrough over HTTP/2 (h2c): 16 conns × 4 streams, ~1 KiB POSTs, distinct paths", False),
    ]:
        if name not in runs:
            continue
        m = metrics_of(name, passthrough_metrics)
        bypass = m.pop("chorus-bypass", None)
        for metric in passthrough_figures:
            values = {t: m[t][metric] for t in m}
            target = verdict = None
            if with_targets and metric == "req/s" and "chorus" in values and "nginx" in values:
                target, verdict = "≥ nginx", values["chorus"] >= values["nginx"]
            if with_targets and metric == "p99 ms" and "chorus" in values and "nginx" in values:
                target, verdict = "≤ nginx", values["chorus"] <= values["nginx"]
            add(title, metric, values, target, verdict)
        if bypass:
            for metric in passthrough_figures:
                values = {t: m[t][metric] for t in m if t != "chorus-alt"}
                values["chorus"] = bypass[metric]
                add(f"{title.split(':')[0]}, chorus with x-chorus-coalesce: off", metric, values)

    # 2. time to first token
    if "ttft" in runs:
        m = metrics_of("ttft", ttft_metrics)
        for metric in ["p50 ms", "p99 ms"]:
            add("time to first event: sequential distinct streams", metric, {t: m[t][metric] for t in m})
        direct = m.get("direct")
        if direct:
            for metric, goal in [("p50 ms", 0.3), ("p99 ms", 1.0)]:
                values = {t: m[t][metric] - direct[metric] for t in m if t != "direct"}
                verdict = values["chorus"] <= goal if "chorus" in values else None
                rows.append({
                    "scenario": "time to first event: sequential distinct streams",
                    "metric": f"added over direct, {metric}",
                    "values": values,
                    "chorus/direct": None,
                    "chorus/nginx": ratio(values.get("chorus"), values.get("nginx")),
                    "target": f"≤ {goal} ms",
                    "met": verdict,
                })

    # 3. distinct streams, 4. fan-out
    stream_scenarios = [("distinct", "distinct streams: 1,000 concurrent, distinct bodies")]
    for name in sorted((s for s in runs if s.startswith("fanout")), key=lambda s: int(s[6:])):
        clients = int(name[6:])
        nginx_workers = runs[name].get("nginx", [{}])[0].get("nginx_workers", 1)
        note = f" (nginx: {nginx_workers} workers, fd limit)" if nginx_workers > 1 else ""
        stream_scenarios.append((name, f"fan-out: {clients:,} identical streams{note}"))
    for name, title in stream_scenarios:
        if name not in runs:
            continue
        m = metrics_of(name, stream_metrics)
        bypass = m.pop("chorus-bypass", None)
        clients = next(iter(runs[name].values()))[0]["load"]["clients"]
        for metric in ["upstream requests", "complete", "distinct bodies", "delivery p50 ms", "delivery p99 ms",
                       "delivery max ms", "replayed events", "proxy CPU s", "peak RSS MiB", "KiB per client",
                       "load-gen CPU s", "other processes on proxy CPU, s"]:
            values = {t: m[t][metric] for t in m}
            target = verdict = None
            c = values.get("chorus")
            if name == "distinct" and metric == "proxy CPU s" and c is not None and values.get("nginx") is not None:
                target, verdict = "≤ nginx", c <= values["nginx"]
            if name == "fanout10000" and c is not None:
                goals = {
                    "upstream requests": ("= 1", lambda v: v == 1),
                    "complete": ("= 10,000", lambda v: v == clients),
                    "distinct bodies": ("= 1 (identical)", lambda v: v == 1),
                    "delivery p99 ms": ("≤ 50 ms", lambda v: v <= 50),
                    "KiB per client": ("≤ 16 KiB", lambda v: v <= 16),
                }
                if metric in goals:
                    target, check = goals[metric]
                    verdict = check(c)
            if name.startswith("fanout") and name != "fanout10000" and metric == "upstream requests" and c is not None:
                target, verdict = "= 1", c == 1
            add(title, metric, values, target, verdict)
        if bypass:
            for metric in ["complete", "delivery p50 ms", "delivery p99 ms", "delivery max ms", "proxy CPU s",
                           "peak RSS MiB", "KiB per client", "other processes on proxy CPU, s"]:
                values = {t: m[t][metric] for t in m if t != "chorus-alt"}
                values["chorus"] = bypass[metric]
                add(f"{title.split(':')[0]}, chorus with x-chorus-coalesce: off", metric, values)

    # 5. cancel
    if "cancel" in runs:
        m = metrics_of("cancel", cancel_metrics)
        for metric in ["p50 ms", "p99 ms", "max ms", "failed rounds"]:
            values = {t: m[t][metric] for t in m}
            target = verdict = None
            if metric == "p99 ms" and values.get("chorus") is not None:
                target, verdict = "≤ 50 ms", values["chorus"] <= 50
            add("cancel: last of 10 clients leaves → upstream closed", metric, values, target, verdict)

    # 6. start-up
    if "startup" in runs:
        m = metrics_of("startup", startup_metrics)
        for metric, goal, check in [("ready p50 ms", "≤ 100 ms", lambda v: v <= 100),
                                    ("ready max ms", None, None),
                                    ("idle RSS MiB", "≤ 15 MiB", lambda v: v <= 15)]:
            values = {t: m[t][metric] for t in m}
            verdict = check(values["chorus"]) if check and "chorus" in values else None
            add("start-up: exec → port accepts; idle RSS", metric, values, goal, verdict)

    # Table
    head = ["scenario", "metric"] + [alt_label if t == "chorus-alt" else t for t in targets]
    head += ["chorus÷direct", "chorus÷nginx"] + ([f"{alt_label}÷chorus"] if alt_label else []) + ["target"]
    rounds = max((len(records) for per_target in runs.values() for records in per_target.values()), default=1)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    previous = None
    for row in rows:
        scenario = row["scenario"] if row["scenario"] != previous else ""
        previous = row["scenario"]
        cells = [scenario, row["metric"]] + [fmt(row["values"].get(t)) for t in targets]
        cells += [fmt(row["chorus/direct"]), fmt(row["chorus/nginx"])]
        if alt_label:
            cells.append(fmt(row.get("alt/chorus")))
        target = row["target"] or ""
        if row["met"] is not None:
            target += " ✅" if row["met"] else " ❌ missed"
        cells.append(target)
        lines.append("| " + " | ".join(cells) + " |")
    machine = ", ".join(f"{k}: {v}" for k, v in meta.items() if v)
    note = ""
    if rounds > 1:
        note = (f"Scenarios run in {rounds} rounds show each figure's median over the rounds "
                "(the JSON has every round and each figure's range).\n\n")
    markdown = "\n".join(lines) + "\n\n" + note + machine + "\n"

    with open(args.markdown, "w") as out:
        out.write(markdown)
    with open(args.json, "w") as out:
        ranges = [{"scenario": k[0], "target": k[1], "metric": k[2], "min": v[0], "max": v[1]}
                  for k, v in spread.items()]
        json.dump({"meta": meta, "table": rows, "ranges": ranges, "raw": raw}, out, indent=1,
                  ensure_ascii=False)
        out.write("\n")
    print(markdown)


if __name__ == "__main__":
    main()
