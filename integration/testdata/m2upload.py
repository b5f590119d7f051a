#!/usr/bin/python3
"""A Mongrel2 handler for temp-file uploads (Mongrel2's upload.temp_store).

A body over the front end's upload threshold is not sent inline: the handler
first gets a message whose x-mongrel2-upload-start header names a temporary
file, then, once the file is complete, a second message with both
x-mongrel2-upload-start and x-mongrel2-upload-done. This handler answers the
second one with the file's size and SHA-256, and says whether the start
message came first. Any other request gets a JSON echo of its headers (to
show that a client cannot send the upload headers itself).

Usage: m2upload.py --requests tcp://127.0.0.1:9997 --replies tcp://127.0.0.1:9996

Prints "READY" once the front end's subscription arrived,
"UPLOAD-START <conn_id> <file>" and "UPLOAD-DONE <conn_id> <file> <size>" as the
messages arrive, "DISCONNECT <conn_id>" for disconnect notices; exits 0 on
SIGTERM/SIGINT. Reuses the parser of m2handler.py.
"""

import argparse
import hashlib
import json
import os
import signal
import sys

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from m2handler import as_list, parse_request, respond  # noqa: E402

START = "x-mongrel2-upload-start"
DONE = "x-mongrel2-upload-done"


def file_digest(path):
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", required=True, help="front end send_spec (we PULL connect)")
    ap.add_argument("--replies", required=True, help="front end recv_spec (we PUB connect)")
    args = ap.parse_args()

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)  # to see the front end's subscription arrive
    pub.setsockopt(zmq.LINGER, 1000)
    pub.connect(args.replies)
    poller = zmq.Poller()
    poller.register(pub, zmq.POLLIN)
    while not stop:
        if poller.poll(100) and pub.recv()[:1] == b"\x01":
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
    started = {}  # conn_id -> what the start message carried
    while not stop:
        events = dict(poller.poll(100))
        if pub in events:
            pub.recv()
        if pull not in events:
            continue
        msg = pull.recv()
        try:
            sender, conn_id, path, pairs, body = parse_request(msg)
        except Exception as e:  # noqa: BLE001 - report and go on
            print("BAD REQUEST %r: %s" % (msg[:200], e), flush=True)
            continue
        hdrs = {}
        for k, v in pairs:
            hdrs.setdefault(k, []).extend(as_list(v))
        method = (hdrs.get("METHOD") or [""])[-1]
        if method == "JSON":
            try:
                if json.loads(body).get("type") == "disconnect":
                    print("DISCONNECT %s" % conn_id, flush=True)
                    started.pop(conn_id, None)
            except ValueError:
                pass
            continue

        start, done = hdrs.get(START), hdrs.get(DONE)
        if start and not done:
            print("UPLOAD-START %s %s" % (conn_id, start[0]), flush=True)
            started[conn_id] = {
                "start": start,
                "content_length": hdrs.get("content-length"),
                "body_len": len(body),
                "file_existed": os.path.exists(start[0]),
            }
            continue  # no answer: the front end goes on writing the file

        if done:
            first = started.pop(conn_id, None)
            try:
                size, digest = file_digest(done[-1])
                err = None
            except OSError as e:
                size, digest, err = -1, "", str(e)
            print("UPLOAD-DONE %s %s %d" % (conn_id, done[-1], size), flush=True)
            out = {
                "upload": True,
                "bytes": size,
                "sha256": digest,
                "error": err,
                "start_first": first is not None,
                "start_message": first,
                "start": start,
                "done": done,
                "content_length": hdrs.get("content-length"),
                "body_len": len(body),
            }
        else:
            out = {
                "upload": False,
                "headers": {k: v for k, v in hdrs.items() if not k.isupper()},
                "body_len": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        reply = respond(200, [("Content-Type", "application/json"), ("X-Worker", "m2upload")],
                        json.dumps(out).encode())
        pub.send(("%s %d:%s, " % (sender, len(conn_id), conn_id)).encode() + reply)
    pull.close()
    pub.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
