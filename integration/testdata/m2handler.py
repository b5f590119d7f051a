#!/usr/bin/python3
"""A small Mongrel2-protocol handler, written independently of workerkit.

The integration tests run it behind the Caddy zmq module to show that a plain
Mongrel2 handler (PULL connect to the front end's send_spec, PUB connect to its
recv_spec, raw HTTP in the reply body) works unchanged.

Usage: m2handler.py --requests tcp://127.0.0.1:9997 --replies tcp://127.0.0.1:9996

Endpoints (same JSON shape as integration/testworker):
  any path      -> 200 JSON echo of the request
  ?status=N     -> status N
Every reply carries "X-Worker: m2handler" and, when the request had an
"X-Token" header, "X-Echo-Token: <token>".
Prints "READY" once the front end's subscription arrived, "DISCONNECT <id>"
for each disconnect notice, and exits 0 on SIGTERM/SIGINT.
"""

import argparse
import json
import signal
import sys
import urllib.parse

import zmq

REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 418: "I'm a teapot",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
}


def netstring(buf, pos):
    """Returns (payload, type_byte, next_pos) of the netstring/tnetstring at pos."""
    colon = buf.index(b":", pos)
    n = int(buf[pos:colon])
    start = colon + 1
    end = start + n
    return buf[start:end], buf[end:end + 1], end + 1


def tnet_parse(payload, kind):
    if kind == b",":
        return payload.decode("utf-8", "surrogateescape")
    if kind == b"#":
        return int(payload)
    if kind == b"!":
        return payload == b"true"
    if kind == b"~":
        return None
    if kind == b"]":
        out, pos = [], 0
        while pos < len(payload):
            p, k, pos = netstring(payload, pos)
            out.append(tnet_parse(p, k))
        return out
    if kind == b"}":
        out, pos = [], 0  # list of pairs: keeps order and duplicates
        while pos < len(payload):
            kp, kk, pos = netstring(payload, pos)
            vp, vk, pos = netstring(payload, pos)
            out.append((tnet_parse(kp, kk), tnet_parse(vp, vk)))
        return out
    raise ValueError("unknown tnetstring type %r" % kind)


def parse_request(msg):
    sender, conn_id, path, rest = msg.split(b" ", 3)
    hpayload, hkind, pos = netstring(rest, 0)
    body, bkind, _ = netstring(rest, pos)
    if bkind != b",":
        raise ValueError("body is not a netstring")
    if hkind == b",":  # JSON object in a netstring
        pairs = json.loads(hpayload, object_pairs_hook=lambda p: p)
    elif hkind == b"}":
        pairs = tnet_parse(hpayload, hkind)
    else:
        raise ValueError("bad header block type %r" % hkind)
    return sender.decode(), conn_id.decode(), path.decode("utf-8", "surrogateescape"), pairs, body


def as_list(v):
    return v if isinstance(v, list) else [v]


def respond(status, headers, body, head=False):
    """Raw HTTP/1.1 response. For HEAD, Content-Length is that of the body a
    GET would have had, and no body follows (RFC 9110 9.3.2)."""
    lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status"))]
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    if status in (204, 304):
        body = b""
    else:
        lines.append("Content-Length: %d" % len(body))
    if head:
        body = b""
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def handle(pairs, body):
    client = {}
    server = {}
    for k, v in pairs:
        if k.isupper():
            server[k] = v  # last one wins: server keys come after client keys
        else:
            client.setdefault(k.lower(), []).extend(as_list(v))
    query = server.get("QUERY", "")
    qs = urllib.parse.parse_qs(query)
    status = 200
    if "status" in qs:
        status = int(qs["status"][0])
    echo = {
        "method": server.get("METHOD", ""),
        "path": server.get("PATH", ""),
        "query": query,
        "headers": client,
        "body": body.decode("utf-8", "surrogateescape"),
        "remote_addr": server.get("REMOTE_ADDR", ""),
        "tls": server.get("URL_SCHEME", "") == "https",
        "proto": server.get("VERSION", ""),
        "host": (client.get("host") or [""])[0],
        "pattern": server.get("PATTERN", ""),
        "worker": "m2handler",
    }
    headers = [("Content-Type", "application/json"), ("X-Worker", "m2handler"),
               ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")]
    tok = client.get("x-token")
    if tok:
        headers.append(("X-Echo-Token", tok[0]))
    out = json.dumps(echo).encode()
    return respond(status, headers, out, head=server.get("METHOD") == "HEAD")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", required=True, help="front end send_spec (we PULL connect)")
    ap.add_argument("--replies", required=True, help="front end recv_spec (we PUB connect)")
    args = ap.parse_args()

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    ctx = zmq.Context()
    # XPUB so we can see the front end's subscription arrive before taking
    # work: a plain PUB drops replies sent before that (slow joiner).
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 1000)
    pub.connect(args.replies)
    poller = zmq.Poller()
    poller.register(pub, zmq.POLLIN)
    while not stop:
        if poller.poll(100):
            sub = pub.recv()
            if sub[:1] == b"\x01":
                break
    if stop:
        return 0
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(args.requests)
    print("READY", flush=True)

    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(pub, zmq.POLLIN)
    while not stop:
        events = dict(poller.poll(100))
        if pub in events:
            pub.recv()  # further (un)subscriptions
        if pull not in events:
            continue
        msg = pull.recv()
        try:
            sender, conn_id, path, pairs, body = parse_request(msg)
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
        reply = handle(pairs, body)
        frame = ("%s %d:%s, " % (sender, len(conn_id), conn_id)).encode() + reply
        pub.send(frame)
    pull.close()
    pub.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
