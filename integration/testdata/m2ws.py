#!/usr/bin/python3
"""Mongrel2's WebSocket echo handler (examples/ws/python/echo.py), ported to
Python 3 and plain pyzmq (Debian has no Mongrel2 handler library), written
independently of workerkit. The integration tests run it behind the Caddy zmq
module to show that a Mongrel2 WebSocket handler works unchanged.

Usage: m2ws.py --requests tcp://127.0.0.1:9997 --replies tcp://127.0.0.1:9996

WEBSOCKET_HANDSHAKE -> the raw 101 with the accept key it was sent as body.
WEBSOCKET           -> FLAGS parsed as echo.py does: text and binary echoed,
                       ping answered with pong, close echoed then an empty
                       reply (ends the connection); "bye" ends it at once.
Any other request    -> 200 "m2ws" with X-Worker: m2ws.
Prints READY, and "DISCONNECT <id>" for each disconnect notice.
"""

import argparse
import json
import signal

import zmq

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
OPCODES = (OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG)
CLOSE_PROTOCOL_ERROR = b"\x03\xea"
CLOSE_BAD_DATA = b"\x03\xef"


def netstring(buf, pos):
    colon = buf.index(b":", pos)
    n = int(buf[pos:colon])
    start = colon + 1
    return buf[start:start + n], buf[start + n:start + n + 1], start + n + 1


def parse_request(msg):
    sender, conn_id, path, rest = msg.split(b" ", 3)
    hpayload, hkind, pos = netstring(rest, 0)
    body, _, _ = netstring(rest, pos)
    if hkind != b",":
        raise ValueError("only JSON headers")
    return sender.decode(), conn_id.decode(), json.loads(hpayload), body


def frame(data, opcode=OP_TEXT, rsvd=0):
    """wsutil.frame: one unmasked final frame."""
    n = len(data)
    header = bytes([0x80 | opcode | rsvd << 4])
    if n < 126:
        header += bytes([n])
    elif n < 2 ** 16:
        header += bytes([126]) + n.to_bytes(2, "big")
    else:
        header += bytes([127]) + n.to_bytes(8, "big")
    return header + data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", required=True)
    ap.add_argument("--replies", required=True)
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

    def reply(sender, conn_id, body):
        pub.send(("%s %d:%s, " % (sender, len(conn_id), conn_id)).encode() + body)

    closing = set()
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(pub, zmq.POLLIN)
    while not stop:
        events = dict(poller.poll(100))
        if pub in events:
            pub.recv()
        if pull not in events:
            continue
        sender, conn_id, headers, body = parse_request(pull.recv())
        method = headers.get("METHOD")
        if method == "JSON":
            if json.loads(body).get("type") == "disconnect":
                closing.discard(conn_id)
                print("DISCONNECT %s" % conn_id, flush=True)
            continue
        if method == "WEBSOCKET_HANDSHAKE":
            reply(sender, conn_id, ("\r\n".join([
                "HTTP/1.1 101 Switching Protocols",
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Accept: %s\r\n\r\n"]) % body.decode()).encode())
            continue
        if method != "WEBSOCKET":
            reply(sender, conn_id, b"HTTP/1.1 200 OK\r\nX-Worker: m2ws\r\nContent-Length: 4\r\n\r\nm2ws")
            continue
        flags = int(headers.get("FLAGS"), 16)
        rsvd, opcode = flags & 0x70, flags & 0xF
        if rsvd != 0 or opcode not in OPCODES:
            reply(sender, conn_id, frame(CLOSE_PROTOCOL_ERROR, OP_CLOSE))
            closing.add(conn_id)
            continue
        if opcode == OP_CLOSE:
            if conn_id not in closing:
                reply(sender, conn_id, frame(body, opcode))
            closing.discard(conn_id)
            reply(sender, conn_id, b"")
            continue
        if conn_id in closing:
            continue
        if opcode == OP_PING:
            reply(sender, conn_id, frame(body, OP_PONG))
            continue
        if opcode == OP_PONG:
            continue
        if opcode == OP_TEXT:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                reply(sender, conn_id, frame(CLOSE_BAD_DATA, OP_CLOSE))
                closing.add(conn_id)
                continue
            if body == b"bye":
                reply(sender, conn_id, b"")
                continue
        reply(sender, conn_id, frame(body, opcode))
    pull.close()
    pub.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
