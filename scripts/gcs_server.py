"""A front for fake-gcs-server, so object_store's GCS client can write to it.

object_store talks to Google Cloud Storage through the XML API: an object is
written with `PUT /<bucket>/<object>`, a conditional write carries
`x-goog-if-generation-match: <generation>` (0: only if absent). fake-gcs-server
serves the XML API's reads, listings and deletes, but answers an XML upload
with "400 invalid uploadType", and honours generation preconditions only on
its JSON API uploads.

This front listens on 127.0.0.1 and forwards every request to the emulator
unchanged, except that one: a plain XML object upload is sent on as the JSON
API's multipart upload (`POST /upload/storage/v1/b/<bucket>/o?uploadType=
multipart&ifGenerationMatch=<generation>`), whose precondition the emulator
checks and applies under one lock. The answer goes back the way the XML API
gives it: the ETag and `x-goog-generation` headers, or the emulator's own
error status (412 when the precondition fails). Nothing else is emulated
here: copies and XML multipart uploads (`?uploads`) reach the emulator as
they are, and fail there as they would without this front.

Usage: gcs_server.py --upstream http://127.0.0.1:PORT --port-file FILE [--port N]
Writes the bound port to FILE once the front accepts connections.
"""

import argparse
import http.client
import json
import os
import sys
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Headers that describe one hop, not the message: never forwarded.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


class Front(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without this each small answer
    # waits for the client's delayed ACK.
    disable_nagle_algorithm = True
    upstream = None  # (host, port), set in main()

    def log_message(self, fmt, *args):  # quiet: the test log stays readable
        pass

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a dropped stream, a cancelled read)

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _upstream(self, method, target, headers, body):
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def _reply(self, status, headers, data):
        self.send_response(status)
        length = None
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                length = value
            elif lower not in HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            # A HEAD answer carries the object's length, not its own.
            self.send_header("Content-Length", length if length is not None else "0")
            self.end_headers()
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def _xml_upload(self):
        """`(bucket, object name)` when this request is a plain XML upload."""
        if self.command != "PUT":
            return None
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if "uploadId" in query or "partNumber" in query or self.headers.get("x-goog-copy-source"):
            return None
        bucket, _, name = url.path.lstrip("/").partition("/")
        if not bucket or not name:
            return None
        return urllib.parse.unquote(bucket), urllib.parse.unquote(name)

    def _forward(self):
        body = self._body()
        upload = self._xml_upload()
        if upload is None:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            self._reply(*self._upstream(self.command, self.path, headers, body))
            return
        bucket, name = upload
        meta = {"name": name}
        if self.headers.get("Content-Type"):
            meta["contentType"] = self.headers["Content-Type"]
        boundary = uuid.uuid4().hex
        multipart = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                json.dumps(meta).encode(),
                f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
                body,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        query = {"uploadType": "multipart"}
        generation = self.headers.get("x-goog-if-generation-match")
        if generation is not None:
            query["ifGenerationMatch"] = generation
        target = f"/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{urllib.parse.urlencode(query)}"
        status, headers, data = self._upstream(
            "POST", target, {"Content-Type": f"multipart/related; boundary={boundary}"}, multipart
        )
        if status != 200:
            self._reply(status, headers, data)
            return
        created = json.loads(data)
        # The XML API's answer: an empty body and the new object's ETag and
        # generation, as the emulator's reads report them.
        self._reply(
            200,
            [("ETag", f'"{created["etag"]}"'), ("x-goog-generation", str(created["generation"]))],
            b"",
        )

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _forward


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="fake-gcs-server's URL, http://127.0.0.1:PORT")
    parser.add_argument("--port", type=int, default=0, help="port to bind on 127.0.0.1 (0: any free port)")
    parser.add_argument("--port-file", required=True, help="where to write the bound port")
    args = parser.parse_args()

    upstream = urllib.parse.urlsplit(args.upstream)
    if upstream.hostname != "127.0.0.1" or not upstream.port:
        sys.exit(f"--upstream must be http://127.0.0.1:PORT, got {args.upstream}")
    Front.upstream = (upstream.hostname, upstream.port)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Front)
    server.daemon_threads = True
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_port))
    os.replace(tmp, args.port_file)
    print(f"GCS front on http://127.0.0.1:{server.server_port} for {args.upstream}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
