#!/usr/bin/env python3
"""PyPI for a test cluster in a network namespace with loopback only (scripts/slurm-matrix.sh).

    pypi_proxy.py serve SOCKET          on the host: an HTTP CONNECT proxy on a unix socket, which lets
                                        through CONNECT to port 443 of PyPI's hosts only
    pypi_proxy.py forward PORT SOCKET   inside the namespace: 127.0.0.1:PORT relayed to SOCKET

Inside, HTTPS_PROXY=http://127.0.0.1:PORT gives pip and uv the index (as on a login node that reaches
PyPI); nothing else leaves the namespace. Standard library only: it runs in any release's chroot.
"""

import asyncio
import os
import sys

ALLOWED = ("pypi.org", "files.pythonhosted.org")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _splice(a: tuple, b: tuple) -> None:
    await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))


async def _connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    host, _, port = target.rpartition(":")
    if method != "CONNECT" or port != "443" or host not in ALLOWED:
        writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        writer.close()
        return
    try:
        upstream = await asyncio.wait_for(asyncio.open_connection(host, 443), 30)
    except (OSError, asyncio.TimeoutError):
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
        writer.close()
        return
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await _splice((reader, writer), upstream)


async def serve(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.start_unix_server(_connect, path)
    os.chmod(path, 0o600)
    async with server:
        await server.serve_forever()


async def forward(port: int, path: str) -> None:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_unix_connection(path)
        except OSError:
            writer.close()
            return
        await _splice((reader, writer), upstream)

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(serve(sys.argv[2]))
    elif sys.argv[1:2] == ["forward"]:
        asyncio.run(forward(int(sys.argv[2]), sys.argv[3]))
    else:
        sys.exit(__doc__)
