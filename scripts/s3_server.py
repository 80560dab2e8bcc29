"""An S3-compatible server for ShardForge's tests: moto's S3 on 127.0.0.1.

Plain moto does not make concurrent conditional PUTs atomic (two racing
`If-None-Match: *` or `If-Match` PUTs can both succeed), which would make the
publish protocol's race tests flaky for the server's sake. This wrapper runs
every mutating request (PUT, POST, DELETE) under one lock, so each
conditional write checks and writes without interleaving; reads stay
concurrent.

Usage: s3_server.py --port-file FILE [--port N]
Writes the bound port to FILE once the server accepts connections.
"""

import argparse
import os
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


class SerialisedWrites:
    """WSGI middleware: one mutating request at a time, response included."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") not in ("PUT", "POST", "DELETE"):
            return self.app(environ, start_response)
        with self.lock:
            result = self.app(environ, start_response)
            try:
                body = [chunk for chunk in result]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            return body


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to bind on 127.0.0.1 (0: any free port)")
    parser.add_argument("--port-file", required=True, help="where to write the bound port")
    args = parser.parse_args()

    app = SerialisedWrites(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", args.port, app, threaded=True)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_port))
    os.replace(tmp, args.port_file)
    print(f"S3 test server on http://127.0.0.1:{server.server_port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
