#!/usr/bin/python3
"""A Mongrel2-protocol handler that BINDS its sockets (the topology of
caddyfiles/workers-bind.Caddyfile: `pool { to <requests> <replies> }`, Caddy
connects to the worker, reverse_proxy style).

Same protocol and JSON echo as m2handler.py, whose parser it reuses; only the
socket topology differs: PULL binds --requests, XPUB binds --replies. workerkit
workers always connect, so this stands in for a binding worker.

Usage: m2bind.py --requests tcp://127.0.0.1:9961 --replies tcp://127.0.0.1:9960 [--name NAME]

Every reply carries "X-Worker: NAME" (and NAME in the echo's "worker" field)
and, when the request had an "X-Token" header, "X-Echo-Token: <token>".
Prints "READY" once both sockets are bound, "SUBSCRIBED" when a front end's
subscription arrives, "DISCONNECT <id>" for each disconnect notice, and exits 0
on SIGTERM/SIGINT.

Requests are read only while some front end is subscribed: a PUB drops what it
sends before the subscription has arrived, so a request taken earlier would be
answered into the void. Until then requests wait in the PULL socket's queue.
"""

import argparse
import json
import os
import signal
import sys
import urllib.parse

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import m2handler  # noqa: E402  (same directory; its main() only runs as a script)


def handle(name, pairs, body):
    client, server = {}, {}
    for k, v in pairs:
        if k.isupper():
            server[k] = v
        else:
            client.setdefault(k.lower(), []).extend(m2handler.as_list(v))
    query = server.get("QUERY", "")
    qs = urllib.parse.parse_qs(query)
    status = int(qs["status"][0]) if "status" in qs else 200
    echo = {
        "worker": name,
        "method": server.get("METHOD", ""),
        "path": server.get("PATH", ""),
        "query": query,
        "headers": client,
        "body": body.decode("utf-8", "surrogateescape"),
        "body_len": len(body),
        "remote_addr": server.get("REMOTE_ADDR", ""),
        "tls": server.get("URL_SCHEME", "") == "https",
        "proto": server.get("VERSION", ""),
        "host": (client.get("host") or [""])[0],
        "pattern": server.get("PATTERN", ""),
    }
    headers = [("Content-Type", "application/json"), ("X-Worker", name)]
    tok = client.get("x-token")
    if tok:
        headers.append(("X-Echo-Token", tok[0]))
    return m2handler.respond(status, headers, json.dumps(echo).encode(),
                             head=server.get("METHOD") == "HEAD")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", required=True, help="endpoint the PULL socket binds")
    ap.add_argument("--replies", required=True, help="endpoint the XPUB socket binds")
    ap.add_argument("--name", default="m2bind", help="X-Worker value")
    args = ap.parse_args()

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 1000)
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pub.bind(args.replies)
    pull.bind(args.requests)
    print("READY", flush=True)

    subscribers = 0
    poller = zmq.Poller()
    poller.register(pub, zmq.POLLIN)
    while not stop:
        if subscribers > 0:
            poller.register(pull, zmq.POLLIN)
        else:
            try:
                poller.unregister(pull)
            except KeyError:
                pass
        events = dict(poller.poll(100))
        if pub in events:
            sub = pub.recv()
            if sub[:1] == b"\x01":
                subscribers += 1
                print("SUBSCRIBED", flush=True)
            elif sub[:1] == b"\x00":
                subscribers -= 1
        if pull not in events:
            continue
        msg = pull.recv()
        try:
            sender, conn_id, path, pairs, body = m2handler.parse_request(msg)
        except Exception as e:  # noqa: BLE001 - report and go on
            print("BAD REQUEST %r: %s" % (msg[:200], e), flush=True)
            continue
        method = ""
        for k, v in pairs:
            if k == "METHOD":
                method = v
        if method == "JSON":
            try:
                if json.loads(body).get("type") == "disconnect":
                    print("DISCONNECT %s" % conn_id, flush=True)
            except ValueError:
                pass
            continue
        reply = handle(args.name, pairs, body)
        pub.send(("%s %d:%s, " % (sender, len(conn_id), conn_id)).encode() + reply)
    pull.close()
    pub.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
