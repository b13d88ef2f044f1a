"""A local PyPI for tests: a PEP 503 simple index of the files in a directory.

GET /simple/<project>/  links to every file of the project, with #sha256=
GET /files/<file>       the file

Links are absolute, as a real index's often point at another host.
Usage: pypi_upstream.py DIR PORT_FILE (see registry_http.py).
"""

import hashlib
import html
import os
import re
import sys

from registry_http import NOT_FOUND, serve


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

    def get(path, base):
        if path.startswith("/files/"):
            file = os.path.join(directory, os.path.basename(path))
            if os.path.isfile(file):
                return 200, "application/octet-stream", open(file, "rb").read()
            return NOT_FOUND
        parts = [p for p in path.split("/") if p]
        if len(parts) != 2 or parts[0] != "simple":
            return NOT_FOUND
        project = normalise(parts[1])
        links = []
        for file in sorted(os.listdir(directory)):
            if project_of(file) != project:
                continue
            digest = hashlib.sha256(open(os.path.join(directory, file), "rb").read()).hexdigest()
            href = html.escape(f"{base}/files/{file}#sha256={digest}")
            links.append(f'<a href="{href}">{html.escape(file)}</a><br/>')
        if not links:
            return NOT_FOUND
        page = "<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n"
        return 200, "text/html", page.encode()

    serve(port_file, get)


if __name__ == "__main__":
    main()
