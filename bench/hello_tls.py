"""The floor for bench/agent.py: a bare aiohttp TLS app with one JSON route, nothing else.

python bench/hello_tls.py PORT CERT KEY [--lazy-trust]

With --lazy-trust aiohttp is imported inside ``agent.tls.lazy_system_trust`` as the
agent does, so the two can be compared with and without that one start-up saving.
"""

import contextlib
import ssl
import sys
from pathlib import Path


def main() -> None:
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    trust = contextlib.nullcontext()
    if "--lazy-trust" in sys.argv[4:]:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from agent.tls import lazy_system_trust

        trust = lazy_system_trust()
    with trust:
        from aiohttp import web

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"started_at": 0.0, "version": "hello"})

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/v1/status", status)
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=context, print=None, access_log=None)


if __name__ == "__main__":
    main()
