#!/usr/bin/env bash
# Measures what scraping /metrics and /zmq/pools every 100 ms costs the
# hello-world load of `make bench` (wrk -t1 -c32, loopback, bin/hello-worker
# behind caddyfiles/observability.Caddyfile), four ways:
#
#   1. Caddy's CPU per scrape, measured alone (no load): SCRAPES back-to-back
#      rounds of both URLs, Caddy's utime+stime from /proc/PID/stat. With
#      Caddy's CPU per second under load, this gives the share of Caddy's CPU
#      that 10 rounds a second take.
#   2. Caddy's CPU per request under load, in rounds without (A) and with (B)
#      the scraper, alternated (ABBA...), medians compared: what scraping adds
#      to each request's CPU, GC included.
#   3. Throughput (wrk req/s), the same rounds, medians compared. On a
#      machine of few cores this also pays for the scraper's own CPU (printed
#      at the end), which a real Prometheus spends elsewhere; and it moves
#      with whatever else the machine runs: check `uptime` first.
#   4. With `go` on PATH: one more round with the scraper, Caddy profiled
#      (its admin endpoint's /debug/pprof): Caddy's CPU per scrape round
#      under load (samples in its admin handler), as a share of Caddy's CPU
#      under load as in 1. Like 1. it counts what the scrapes cost (not the
#      GC their garbage adds outside them) and other jobs move it little.
#
# 2. and 3. move with what the rest of the machine does (on a 2-vCPU VM the
# two vCPUs may share a core, so another process's work slows Caddy's):
# with the machine not quiet, trust 1. and 4. Profile samples are 10 ms
# each: use rounds of 10 s for a few dozen in 4.
#
#   make build && go build -o /tmp/scraper ./integration/testdata/scraper
#   integration/testdata/scrape_overhead.sh /tmp/scraper [ROUNDS] [SECONDS] [SCRAPES]
#
# SCRAPER is integration/testdata/scraper: it GETs its URL arguments every
# -every (100 ms) until SIGTERM, or -n rounds. Needs bin/caddy,
# bin/hello-worker, wrk, python3.
set -euo pipefail
scraper=$1 rounds=${2:-6} secs=${3:-5} scrapes=${4:-500}
repo=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export ADMIN_ADDR=127.0.0.1:$(port) HTTP_PORT=$(port) ZMQ_REQUESTS=tcp://127.0.0.1:$(port) \
	ZMQ_REPLIES=tcp://127.0.0.1:$(port) ZMQ_CONTROL=tcp://127.0.0.1:$(port) \
	EVENTS_LOG=$dir/events.log XDG_DATA_HOME=$dir XDG_CONFIG_HOME=$dir
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
pids=()
trap cleanup EXIT
"$repo/bin/caddy" run --config "$repo/caddyfiles/observability.Caddyfile" --adapter caddyfile >"$dir/caddy.log" 2>&1 &
caddy=$!
pids+=($caddy)
"$repo/bin/hello-worker" -frontend "$ZMQ_REQUESTS,$ZMQ_REPLIES,$ZMQ_CONTROL" >"$dir/worker.log" 2>&1 &
pids+=($!)
url=http://127.0.0.1:$HTTP_PORT/
for _ in $(seq 100); do curl -sf "$url" >/dev/null && break; sleep 0.1; done
curl -sf "$url" >/dev/null || { echo "Caddy does not answer $url" >&2; cat "$dir/caddy.log" >&2; exit 1; }
urls=("http://$ADMIN_ADDR/metrics" "http://$ADMIN_ADDR/zmq/pools")
hz=$(getconf CLK_TCK)
# cpu: Caddy's user+system CPU so far, in clock ticks (fields 14 and 15 of
# /proc/PID/stat; the command name, field 2, has no space: "caddy").
cpu() { awk '{print $14 + $15}' "/proc/$caddy/stat"; }
calc() { awk "BEGIN {printf \"%.${2:-1}f\", $1}"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

# 1. CPU per scrape round, no load (warm up first: the first scrapes
# allocate what later ones reuse).
"$scraper" -every 0 -n 50 "${urls[@]}" 2>/dev/null
c0=$(cpu)
"$scraper" -every 0 -n "$scrapes" "${urls[@]}" 2>"$dir/idle.log"
c1=$(cpu)
per_round_ms=$(calc "($c1 - $c0) * 1000 / $hz / $scrapes" 3)
echo "idle: Caddy CPU per scrape round (/metrics + /zmq/pools): ${per_round_ms} ms over $scrapes rounds; $(cat "$dir/idle.log")"

# 2 and 3. Rounds under load. run prints "req/s requests caddy_ticks".
wrk -t1 -c32 -d2s "$url" >/dev/null # warm-up
run() {
	local c0 c1 out
	c0=$(cpu)
	out=$(wrk -t1 -c32 -d"${secs}s" "$url")
	c1=$(cpu)
	echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(awk '/requests in/ {print $1}' <<<"$out") $((c1 - c0))"
}
ra=() rb=() ca=() cb=() loads=()
for r in $(seq "$rounds"); do
	if ((r % 2)); then order="A B"; else order="B A"; fi
	for x in $order; do
		if [[ $x == A ]]; then
			read -r rps n ticks < <(run)
			ra+=("$rps") ca+=("$(calc "$ticks * 1e6 / $hz / $n" 2)")
			loads+=("$(calc "$ticks / $hz / $secs" 2)")
		else
			"$scraper" "${urls[@]}" 2>>"$dir/scraper.log" &
			sp=$!
			read -r rps n ticks < <(run)
			kill -TERM $sp
			wait $sp || true
			rb+=("$rps") cb+=("$(calc "$ticks * 1e6 / $hz / $n" 2)")
		fi
	done
	echo "round $r: without ${ra[-1]} req/s, ${ca[-1]} us Caddy CPU/request; with ${rb[-1]} req/s, ${cb[-1]} us/request"
done
mra=$(median "${ra[@]}") mrb=$(median "${rb[@]}") mca=$(median "${ca[@]}") mcb=$(median "${cb[@]}") load=$(median "${loads[@]}")
echo "Caddy CPU under load (without scraping): $load cores"
echo "1. share of Caddy's CPU that 10 scrape rounds/s take: $(calc "10 * $per_round_ms / 1000 / $load * 100" 2)%"
echo "2. median Caddy CPU per request: without $mca us, with $mcb us: +$(calc "($mcb - $mca) / $mca * 100" 2)%"
echo "3. median req/s: without $mra, with $mrb: cost $(calc "($mra - $mrb) / $mra * 100" 2)%"
if command -v go >/dev/null; then
	"$scraper" "${urls[@]}" 2>/dev/null &
	sp=$!
	curl -sf -o "$dir/cpu.prof" "http://$ADMIN_ADDR/debug/pprof/profile?seconds=$((secs > 2 ? secs - 1 : 1))" &
	cp=$!
	wrk -t1 -c32 -d"${secs}s" "$url" >/dev/null
	wait $cp || true
	kill -TERM $sp
	wait $sp || true
	# "Showing nodes accounting for 0.10s, 1.99% of 5.02s total": the
	# admin endpoint's samples, in seconds. -nodefraction=0: by default
	# pprof hides the nodes under 0.5% of the whole profile, and their
	# samples are then left out of that sum.
	admin_s=$(go tool pprof -top -nodefraction=0 -focus 'caddy/v2\.adminHandler\.ServeHTTP' "$repo/bin/caddy" "$dir/cpu.prof" 2>/dev/null |
		awk '/^Showing nodes accounting for/ {v = $5; sub(/,$/, "", v)
			if (v ~ /ms$/) v = v / 1000; else if (v ~ /us$/) v = v / 1e6; else sub(/s$/, "", v)
			print v + 0}')
	prof_s=$((secs > 2 ? secs - 1 : 1))
	if [[ -n $admin_s ]]; then
		round_ms=$(calc "$admin_s * 1000 / ($prof_s * 10)" 3)
		echo "4. under load, Caddy CPU per scrape round (profiled): $round_ms ms: $(calc "10 * $round_ms / 1000 / $load * 100" 2)% of Caddy's CPU"
	else
		echo "4. no profile (is the admin endpoint's /debug/pprof reachable?)"
	fi
fi
echo "scraper (its own process; last rounds):"
tail -n 3 "$dir/scraper.log"
