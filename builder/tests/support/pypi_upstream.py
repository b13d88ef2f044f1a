"""A local PyPI for tests: a PEP 503 simple index of the files in a directory.

GET /simple/<project>/  links to every file of the project, with #sha256=
GET /files/<file>       the file

Links are absolute, as a real index's often point at another host.
Usage: pypi_upstream.py DIR PORT_FILE. Binds 127.0.0.1 on a free port and
writes the port to PORT_FILE once listening.
"""

import hashlib
import html
import http.server
import os
import re
import sys
import urllib.parse


def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def project_of(file):
    if file.endswith(".whl"):
        return normalise(file.split("-")[0])
    if file.endswith(".tar.gz"):
        return normalise(file[: -len(".tar.gz")].rsplit("-", 1)[0])
    return None


def main():
    directory, port_file = sys.argv[1], sys.argv[2]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = urllib.parse.unquote(self.path.split("?")[0])
            base = f"http://127.0.0.1:{self.server.server_port}"
            if path.startswith("/files/"):
                file = os.path.join(directory, os.path.basename(path))
                if os.path.isfile(file):
                    return self.reply(200, "application/octet-stream", open(file, "rb").read())
                return self.reply(404, "text/plain", b"not found")
            parts = [p for p in path.split("/") if p]
            if len(parts) != 2 or parts[0] != "simple":
                return self.reply(404, "text/plain", b"not found")
            project = normalise(parts[1])
            links = []
            for file in sorted(os.listdir(directory)):
                if project_of(file) != project:
                    continue
                digest = hashlib.sha256(open(os.path.join(directory, file), "rb").read()).hexdigest()
                href = html.escape(f"{base}/files/{file}#sha256={digest}")
                links.append(f'<a href="{href}">{html.escape(file)}</a><br/>')
            if not links:
                return self.reply(404, "text/plain", b"not found")
            page = "<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n"
            return self.reply(200, "text/html", page.encode())

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
