"""The package registries, for a test cluster in a network namespace of its own (tests/ray_up_node.sh):
an HTTP CONNECT proxy that reaches PyPI only, on a Unix socket outside the namespace (`serve PATH`),
and, inside it, a forwarder from a loopback port to that socket (`forward PORT PATH`). pip and uv on
the test's node install through it, as a node behind a site proxy does; nothing else leaves. `to PATH
HOST:PORT` is a Unix socket onto one loopback server outside (the test's S3 stand-in), which a forwarder
inside offers on a loopback port of the namespace."""
import asyncio
import sys

ALLOWED = {("pypi.org", 443), ("files.pythonhosted.org", 443)}


async def pipe(reader, writer):
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def connect(reader, writer):
    try:
        request = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or not port.isdigit() or (host, int(port)) not in ALLOWED:
            writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        writer.close()
        return
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def forward(reader, writer, path):
    try:
        up_reader, up_writer = await asyncio.open_unix_connection(path)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def bridge(reader, writer, host, port):
    try:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
    except OSError:
        writer.close()
        return
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def main(argv):
    if argv[0] == "serve":
        server = await asyncio.start_unix_server(connect, argv[1])
    elif argv[0] == "to":   # to PATH HOST:PORT: a Unix socket, outside, onto one loopback server (the test's S3)
        host, port = argv[2].rsplit(":", 1)
        server = await asyncio.start_unix_server(lambda r, w: bridge(r, w, host, port), argv[1])
    else:
        server = await asyncio.start_server(lambda r, w: forward(r, w, argv[2]), "127.0.0.1", int(argv[1]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
