"""A local npm registry for tests: serves the tarballs in a directory.

GET /<name>               the packument, built from the tarballs' package.json
GET /<name>/-/<file>.tgz  the tarball

Usage: npm_upstream.py DIR PORT_FILE. Binds 127.0.0.1 on a free port and
writes the port to PORT_FILE once listening. Unscoped names only.
"""

import base64
import hashlib
import http.server
import json
import os
import sys
import tarfile
import urllib.parse


def packuments(directory, base):
    docs = {}
    for file in sorted(os.listdir(directory)):
        if not file.endswith(".tgz"):
            continue
        path = os.path.join(directory, file)
        data = open(path, "rb").read()
        with tarfile.open(path, "r:gz") as tar:
            manifest = json.load(tar.extractfile("package/package.json"))
        name, version = manifest["name"], manifest["version"]
        manifest["dist"] = {
            "tarball": f"{base}/{name}/-/{file}",
            "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
            "shasum": hashlib.sha1(data).hexdigest(),
        }
        doc = docs.setdefault(name, {"name": name, "versions": {}, "dist-tags": {}})
        doc["versions"][version] = manifest
        doc["dist-tags"]["latest"] = version
    return docs


def main():
    directory, port_file = sys.argv[1], sys.argv[2]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = urllib.parse.unquote(self.path.split("?")[0]).lstrip("/")
            base = f"http://127.0.0.1:{self.server.server_port}"
            if "/-/" in path:
                file = os.path.join(directory, os.path.basename(path))
                if os.path.isfile(file):
                    return self.reply(200, "application/octet-stream", open(file, "rb").read())
                return self.reply(404, "application/json", b'{"error":"not found"}')
            doc = packuments(directory, base).get(path)
            if doc is None:
                return self.reply(404, "application/json", b'{"error":"not found"}')
            return self.reply(200, "application/json", json.dumps(doc).encode())

        def reply(self, status, content_type, body):
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


if __name__ == "__main__":
    main()
