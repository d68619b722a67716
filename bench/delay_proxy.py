#!/usr/bin/env python3
"""A TCP proxy on loopback that gives the upstream registry a realistic round-trip time.

bench/run puts it in front of the upstream Distribution registry; every tool under test
talks to the upstream only through it. The delay model, with RTT = --rtt-ms:

- a new connection costs one RTT before its first byte is forwarded (the TCP handshake
  a real client pays), and one more with --tls-cert (the proxy then terminates TLS 1.3,
  whose handshake costs a real client one round trip; session resumption is not offered);
- every HTTP request costs one RTT: the proxy parses request boundaries on the client
  side (request line + headers, then a Content-Length body) and holds each request's
  head for RTT before forwarding it, so a request/response pair takes at least one RTT.

A connection whose first byte is not a letter (a client trying TLS first, as skopeo does
with tls-verify off) is piped unparsed after one RTT, so the registry's immediate 400
lets the client fall back to plain HTTP as it would against a real plain-HTTP registry.
Responses are piped back unchanged and unthrottled (loopback bandwidth). A chunked
request body switches the connection to plain piping (no further delays); the tools
under test only read from the upstream, so this does not happen in the benchmark.
Only 127.0.0.1 is ever listened on or connected to.

--token-gate makes the proxy ask for bearer tokens like Docker Hub: every /v2/ request
without a token it issued gets a 401 with `WWW-Authenticate: Bearer realm=".../token"`, and
GET /token hands out tokens (printing "T"; each 401 prints "A"), so every new client (every
crane process) pays the ping, the challenge and the token round trip. Go clients send one
request at a time per connection, so the proxy answers these itself on the client side.
--bandwidth-mbps caps the bytes of every response, summed over all connections (one shared
link), to that many megabits per second.
"""

import argparse
import asyncio
import itertools
import json
import signal
import ssl
import sys

CHUNK = 256 * 1024
MAX_HEAD = 64 * 1024


def close_write(writer):
    """Half-closes the stream (the peer sees end of data); already closed is fine."""
    try:
        writer.write_eof()
    except (OSError, RuntimeError):
        pass


class Link:
    """One shared link: bytes sent through it, over all connections, at most `rate` per s."""

    def __init__(self, bytes_per_sec):
        self.rate = bytes_per_sec
        self.free_at = 0.0

    async def send(self, size):
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self.free_at)
        self.free_at = start + size / self.rate
        delay = self.free_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


class Gate:
    """Bearer tokens like Docker Hub's: issued by GET /token, required on /v2/."""

    def __init__(self, port, scheme):
        self.realm = f"{scheme}://127.0.0.1:{port}/token"
        self.issued = set()
        self.counter = itertools.count()

    def answer(self, method, path, headers):
        """The proxy's own response to this request, or None to forward it."""
        if path.startswith(b"/token"):
            token = f"bench-token-{next(self.counter)}"
            self.issued.add(token)
            print("T", flush=True)
            body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
            return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body)
        if not path.startswith(b"/v2/"):
            return None
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer " and auth[7:].strip().decode(errors="replace") in self.issued:
            return None
        print("A", flush=True)
        repo = path[len(b"/v2/"):].split(b"/manifests/")[0].split(b"/blobs/")[0].split(b"/tags/")[0]
        scope = f',scope="repository:{repo.decode(errors="replace")}:pull"' if repo else ""
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        head = (f'HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n'
                f'WWW-Authenticate: Bearer realm="{self.realm}",service="bench"{scope}\r\n'
                f'Content-Length: {len(body)}\r\n\r\n').encode()
        return head + (b"" if method == b"HEAD" else body)


async def pipe(reader, writer, link=None):
    try:
        while True:
            data = await reader.read(CHUNK if link is None else 64 * 1024)
            if not data:
                break
            if link is not None:
                await link.send(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        close_write(writer)


async def forward_requests(reader, writer, rtt, client_writer=None, gate=None):
    """Client -> upstream, delaying each request's head by one RTT; with a gate, answers
    token requests and unauthenticated /v2/ requests itself (on `client_writer`)."""
    try:
        first = await reader.read(1)
        if not first:
            return
        if not first.isalpha():
            # Not HTTP (a client trying TLS first): let the registry answer it (Go's server
            # replies 400 at once, and the client falls back to plain HTTP), after one RTT.
            if rtt:
                await asyncio.sleep(rtt)
            writer.write(first)
            await pipe(reader, writer)
            return
        pending = first
        while True:
            try:
                head = pending + await reader.readuntil(b"\r\n\r\n")
                pending = b""
            except asyncio.IncompleteReadError as partial:
                if pending or partial.partial:
                    writer.write(pending + partial.partial)
                break
            except asyncio.LimitOverrunError:
                await pipe(reader, writer)  # not HTTP as we know it: just pipe
                return
            length = 0
            chunked = False
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                headers[name] = value.strip()
                if name == b"content-length":
                    length = int(value.strip() or b"0")
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if rtt:
                await asyncio.sleep(rtt)
            if gate is not None and not chunked:
                method, _, rest = head.partition(b" ")
                path = rest.partition(b" ")[0]
                answer = gate.answer(method, path, headers)
                if answer is not None:
                    while length > 0:  # a body we do not forward
                        data = await reader.read(min(CHUNK, length))
                        if not data:
                            break
                        length -= len(data)
                    client_writer.write(answer)
                    await client_writer.drain()
                    continue
            writer.write(head)
            if chunked:
                await writer.drain()
                await pipe(reader, writer)
                return
            while length > 0:
                data = await reader.read(min(CHUNK, length))
                if not data:
                    break
                writer.write(data)
                length -= len(data)
                await writer.drain()
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        close_write(writer)


def make_handler(target_port, rtt, counters, log_connections, connect_rtts, gate=None, link=None):
    async def handle(client_reader, client_writer):
        counters["connections"] += 1
        if log_connections:
            print("C", flush=True)  # one line per accepted connection, counted by bench/run
        try:
            if rtt:
                await asyncio.sleep(rtt * connect_rtts)  # the TCP (and TLS) handshake
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port, limit=MAX_HEAD)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(
                forward_requests(client_reader, up_writer, rtt, client_writer, gate),
                pipe(up_reader, client_writer, link),
            )
        finally:
            for w in (up_writer, client_writer):
                try:
                    w.close()
                except OSError:
                    pass

    return handle


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--tls-cert", help="serve TLS with this certificate (PEM) ...")
    parser.add_argument("--tls-key", help="... and this key (PEM)")
    parser.add_argument("--log-connections", action="store_true", help='print "C" per accepted connection')
    parser.add_argument("--token-gate", action="store_true", help="ask for bearer tokens like Docker Hub")
    parser.add_argument("--bandwidth-mbps", type=float, default=0.0,
                        help="cap response bytes over all connections (0: no cap)")
    args = parser.parse_args()
    counters = {"connections": 0}
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_3
        tls.options |= ssl.OP_NO_TICKET
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    gate = Gate(args.listen_port, "https" if tls else "http") if args.token_gate else None
    link = Link(args.bandwidth_mbps * 1e6 / 8) if args.bandwidth_mbps > 0 else None
    server = await asyncio.start_server(
        make_handler(args.target_port, args.rtt_ms / 1000.0, counters, args.log_connections, 2 if tls else 1,
                     gate, link),
        "127.0.0.1",
        args.listen_port,
        limit=MAX_HEAD,
        backlog=1024,
        ssl=tls,
        ssl_handshake_timeout=30 if tls else None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"delay proxy 127.0.0.1:{args.listen_port} -> 127.0.0.1:{args.target_port} rtt={args.rtt_ms}ms"
          f" tls={'on' if tls else 'off'} token-gate={'on' if gate else 'off'}"
          f" bandwidth={args.bandwidth_mbps or 'unlimited'}", flush=True)
    async with server:
        await stop.wait()
    print(f"delay proxy: {counters['connections']} connections", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
