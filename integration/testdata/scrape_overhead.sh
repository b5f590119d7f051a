#!/usr/bin/env bash
# Measures what scraping /metrics and /zmq/pools every 100 ms costs the
# hello-world load of `make bench` (wrk -t1 -c32, loopback): rounds of wrk
# without (A) and with (B) a scraper, alternated, medians compared.
#   go build -o /tmp/scraper ./integration/testdata/scraper
#   integration/testdata/scrape_overhead.sh /tmp/scraper [ROUNDS] [SECONDS]
# SCRAPER is a program that GETs its URL arguments every 100 ms until
# SIGTERM. Needs bin/caddy, bin/hello-worker and wrk.
set -euo pipefail
scraper=$1 rounds=${2:-6} secs=${3:-5}
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
pids+=($!)
"$repo/bin/hello-worker" -frontend "$ZMQ_REQUESTS,$ZMQ_REPLIES,$ZMQ_CONTROL" >"$dir/worker.log" 2>&1 &
pids+=($!)
url=http://127.0.0.1:$HTTP_PORT/
for _ in $(seq 100); do curl -sf "$url" >/dev/null && break; sleep 0.1; done
wrk -t1 -c32 -d2s "$url" >/dev/null # warm-up
run() { wrk -t1 -c32 -d"${secs}s" "$url" | awk '/Requests\/sec/ {print $2}'; }
a=() b=()
for r in $(seq "$rounds"); do
	if ((r % 2)); then order="A B"; else order="B A"; fi
	for x in $order; do
		if [[ $x == A ]]; then
			a+=("$(run)")
		else
			"$scraper" "http://$ADMIN_ADDR/metrics" "http://$ADMIN_ADDR/zmq/pools" 2>>"$dir/scraper.log" &
			sp=$!
			b+=("$(run)")
			kill -TERM $sp; wait $sp || true
		fi
	done
	echo "round $r: without ${a[-1]} with ${b[-1]}"
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
ma=$(median "${a[@]}") mb=$(median "${b[@]}")
echo "median req/s without scraping: $ma, with: $mb, cost: $(awk -v a="$ma" -v b="$mb" 'BEGIN {printf "%.1f%%", 100*(a-b)/a}')"
tail -n 3 "$dir/scraper.log"
