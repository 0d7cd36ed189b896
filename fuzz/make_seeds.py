#!/usr/bin/env python3
"""Writes the committed seed corpora (fuzz/corpus/<target>/seed-*).

Run from anywhere: python3 fuzz/make_seeds.py. Seeds are small, valid or
nearly valid inputs of each kind, so the fuzzers start past the easy checks.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(opcode, payload, fin=True, mask=True, rsv=0):
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, (0x80 if mask else 0) | n])
    elif n < 65536:
        head = bytes([b0, (0x80 if mask else 0) | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, (0x80 if mask else 0) | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    return head + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))


def streams(mask):
    f = lambda *a, **k: frame(*a, mask=mask, **k)
    yield "text", f(1, b"Hello")
    yield "binary-300", f(2, bytes(range(256)) + bytes(44))
    yield "binary-70000", f(2, bytes(70000))
    yield "fragmented", f(1, b"frag", fin=False) + f(9, b"ping") + f(0, "ment€".encode(), fin=True)
    yield "utf8-split", f(1, "€".encode()[:1], fin=False) + f(0, "€".encode()[1:])
    yield "close-1000", f(8, struct.pack(">H", 1000) + b"bye")
    yield "close-empty", f(8, b"")
    yield "close-1005", f(8, struct.pack(">H", 1005))
    yield "close-short", f(8, b"\x03")
    yield "close-bad-reason", f(8, struct.pack(">H", 1000) + b"\xff")
    yield "ping-pong", f(9, b"x" * 125) + f(10, b"")
    yield "bad-utf8", f(1, "κόσμε".encode() + b"\xf4\x90\x80\x80")
    yield "rsv", f(1, b"x", rsv=4)
    yield "opcode-3", f(3, b"")
    yield "continuation-alone", f(0, b"x")
    yield "nonminimal", bytes([0x82, (0x80 if mask else 0) | 126, 0, 5]) + (KEY if mask else b"") + bytes(5)
    yield "unmasked" if mask else "masked", frame(1, b"hi", mask=not mask)
    yield "many", b"".join(f(1, str(i).encode()) for i in range(20))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as fh:
        fh.write(data)


def main():
    for name, data in streams(mask=True):
        write("connection_server", name, b"\x05" + data)
        write("frame_header", "server-" + name, b"\x00" + data[:14])
    for name, data in streams(mask=False):
        write("connection_client", name, b"\x06" + data)
        write("frame_header", "client-" + name, b"\x01" + data[:14])
    texts = {
        "ascii": b"hello world, this is plain ASCII text long enough for the word-wise path" * 2,
        "greek": "κόσμε".encode() * 20,
        "cjk": "中文字符测试".encode() * 20,
        "emoji": "😀🎉".encode() * 10,
        "surrogate": b"abc\xed\xa0\x80def",
        "overlong": b"\xc0\xaf",
        "too-big": b"\xf4\x90\x80\x80",
        "truncated": "€".encode()[:2],
    }
    for name, t in texts.items():
        write("utf8", name, b"\x00" + t)
        write("utf8", name + "-wide", b"\x01" + t)
    req = (b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Protocol: chat, superchat\r\n"
           b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=15, x-foo; a=\"b\"\r\n\r\n")
    # Input::Raw is variant 0 (a zero discriminant), the rest is the bytes.
    write("handshake_request", "valid", b"\x00\x00\x00\x00" + req)
    write("handshake_request", "version-8", b"\x00\x00\x00\x00" + req.replace(b"Version: 13", b"Version: 8"))
    write("handshake_request", "post", b"\x00\x00\x00\x00" + req.replace(b"GET", b"POST"))
    write("handshake_request", "no-key", b"\x00\x00\x00\x00" + req.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""))
    write("handshake_request", "lowercase", b"\x00\x00\x00\x00" + req.lower().replace(b"get /chat http/1.1", b"GET /chat HTTP/1.1"))
    write("handshake_request", "http10", b"\x00\x00\x00\x00" + req.replace(b"HTTP/1.1", b"HTTP/1.0"))
    write("handshake_request", "absolute-uri", b"\x00\x00\x00\x00" + req.replace(b"GET /chat", b"GET ws://example.com/chat?x=1"))
    write("handshake_request", "values", b"\xff\xff\xff\xff" + b"chat, v2\x00permessage-deflate; server_no_context_takeover")
    resp = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n")
    write("handshake_response", "101", b"\x00\x00\x00\x00" + resp)
    write("handshake_response", "403", b"\x00\x00\x00\x00" + b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    write("handshake_response", "101-ext", b"\x00\x00\x00\x00" + resp.replace(b"Protocol: chat", b"Extensions: permessage-deflate"))
    write("handshake_response", "101-proto-other", b"\x00\x00\x00\x00" + resp.replace(b"Protocol: chat", b"Protocol: superchat"))
    write("handshake_response", "101-no-upgrade", b"\x00\x00\x00\x00" + resp.replace(b"Upgrade: websocket\r\n", b""))
    write("handshake_response", "fields", b"\xff\xff\xff\xff\x65\x00\x01chat\x01permessage-deflate\x01")
    write("roundtrip", "mixed", bytes(range(64)) + "héllo wörld".encode() * 4)
    write("roundtrip", "zeros", bytes(200))
    write("roundtrip", "ones", b"\x01" * 200)


if __name__ == "__main__":
    main()
