"""What the local test registries share: a threaded HTTP server on
127.0.0.1, on a free port written to a file once it listens, answering GET
with a function of the path.

get(path, base) -> (status, content_type, body): `path` is unquoted and
without the query, `base` is this server's own URL.
"""

import http.server
import os
import urllib.parse

NOT_FOUND = (404, "text/plain", b"not found")


def serve(port_file, get):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = urllib.parse.unquote(self.path.split("?")[0])
            status, content_type, body = get(path, f"http://127.0.0.1:{self.server.server_port}")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_port))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()
