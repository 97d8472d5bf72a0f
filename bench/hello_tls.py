"""The floor for bench/agent.py: a bare aiohttp TLS app with one JSON route, nothing else.

python bench/hello_tls.py PORT CERT KEY
"""

import ssl
import sys

from aiohttp import web


async def status(request: web.Request) -> web.Response:
    return web.json_response({"started_at": 0.0, "version": "hello"})


def main() -> None:
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/v1/status", status)
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=context, print=None, access_log=None)


if __name__ == "__main__":
    main()
