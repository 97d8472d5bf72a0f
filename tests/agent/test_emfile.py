"""Out of descriptors: asyncio's accept errors come out as a few lines, and the listener
carries on once descriptors are free again.

A listener in its own process with a soft descriptor limit of 32 and the agent's loop
exception handler and log rate limit; the test holds 100 connections to it (the kernel
completes them, the listener cannot accept most: EMFILE, again and again), then lets
them go and expects a new connection to be served.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from tests.agent.storm import ROOT

LISTENER = r"""
import asyncio, logging, resource, sys
from agent import logs

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
logs.install(logging.getLogger().handlers)

class Hello(asyncio.Protocol):
    def connection_made(self, transport):
        transport.write(b"hello")

async def main():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(logs.loop_exception_handler)
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    server = await loop.create_server(Hello, "127.0.0.1", 0, backlog=200)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_descriptor_exhaustion_logs_a_few_lines_and_the_listener_survives():
    process = subprocess.Popen(
        [sys.executable, "-c", LISTENER],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    held: list[socket.socket] = []
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        for _ in range(100):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(3)  # asyncio retries accept() every second; each one fails
        for sock in held:
            sock.close()
        held.clear()
        deadline = time.monotonic() + 10
        greeting = b""
        while time.monotonic() < deadline and greeting != b"hello":
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.settimeout(2)
                try:
                    greeting = sock.recv(5)
                except TimeoutError:
                    greeting = b""
        assert greeting == b"hello"
    finally:
        for sock in held:
            sock.close()
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    lines = stderr.splitlines()
    assert any("Too many open files" in line for line in lines), stderr[-2000:]
    assert "Traceback" not in stderr
    assert len(lines) <= 3, stderr[-2000:]
