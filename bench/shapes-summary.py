#!/usr/bin/env python3
"""Summarises bench/proxy.sh's traffic shapes (issue 11) from its raw.tsv: per shape, the
median throughput and p99 of each target, and windlass's ratios to nginx with one worker
taken per repetition (the four targets of a repetition ran back to back, so a ratio within
one repetition is what survives the noise of a shared box), as min-median-max; proxy CPU
per request and upstream connections opened per 100 requests, counted by the app."""
import statistics
import sys
from collections import defaultdict

TARGETS = ["direct", "windlass", "nginx_1w", "nginx_2w", "windlass_b"]


def main(path):
    v = defaultdict(dict)  # (shape, target, rep) -> metric -> value
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 5 or not parts[0].startswith("shape_"):
            continue
        sec, target, rep, metric, value = parts
        try:
            v[(sec[6:], target, int(rep))][metric] = float(value)
        except ValueError:
            pass
    shapes = []
    for (shape, _, _) in v:
        if shape not in shapes:
            shapes.append(shape)
    med = lambda xs: statistics.median(xs) if xs else float("nan")

    def col(shape, target, metric):
        return [m[metric] for (s, t, _), m in v.items() if s == shape and t == target and metric in m]

    def ratios(shape, metric, num="windlass", den="nginx_1w"):
        out = []
        reps = {r for (s, _, r) in v if s == shape}
        for r in sorted(reps):
            a = v.get((shape, num, r), {}).get(metric)
            b = v.get((shape, den, r), {}).get(metric)
            if a is not None and b:
                out.append(a / b)
        return out

    def span(xs):
        if not xs:
            return "n/a"
        return f"{min(xs):.2f}–{med(xs):.2f}–{max(xs):.2f}×"

    ab = any(t == "windlass_b" for (_, t, _) in v)
    if ab:
        print("windlass_b: the WINDLASS_B build, in the same run (last columns: windlass / windlass_b per repetition)\n")
    print("| shape | direct req/s | windlass | nginx 1w | nginx 2w | windlass/nginx 1w req/s (min–med–max) | p99 windlass/nginx 1w | p99 ms (wl / ngx1) | proxy CPU µs/req (wl / ngx1 / ngx2) | upstream conns per 100 req (wl / ngx1 / direct) | non-2xx+errors wl |" + (" windlass/windlass_b req/s | p99 | CPU µs/req (b) |" if ab else ""))
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if ab else ""))
    for shape in shapes:
        rps = {t: med(col(shape, t, "rps")) for t in TARGETS}
        p99 = {t: med(col(shape, t, "p99_ms")) for t in TARGETS}
        cpu = {t: med(col(shape, t, "proxy_cpu_us_per_req")) for t in TARGETS}
        con = {t: med(col(shape, t, "upstream_conns_per_100")) for t in TARGETS}
        bad = sum(col(shape, "windlass", "non2xx")) + sum(col(shape, "windlass", "sock_err"))
        print(
            f"| {shape} | {rps['direct']:.0f} | {rps['windlass']:.0f} | {rps['nginx_1w']:.0f} | {rps['nginx_2w']:.0f} "
            f"| {span(ratios(shape, 'rps'))} | {span(ratios(shape, 'p99_ms'))} | {p99['windlass']:.2f} / {p99['nginx_1w']:.2f} "
            f"| {cpu['windlass']:.0f} / {cpu['nginx_1w']:.0f} / {cpu['nginx_2w']:.0f} "
            f"| {con['windlass']:.2f} / {con['nginx_1w']:.2f} / {con['direct']:.2f} | {bad:.0f} |"
            + (
                f" {span(ratios(shape, 'rps', den='windlass_b'))} | {span(ratios(shape, 'p99_ms', den='windlass_b'))} | {cpu['windlass_b']:.0f} |"
                if ab
                else ""
            )
        )


if __name__ == "__main__":
    main(sys.argv[1])
