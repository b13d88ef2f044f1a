"""A local npm registry for tests: serves the tarballs in a directory.

GET /<name>               the packument, built from the tarballs' package.json
GET /<name>/-/<file>.tgz  the tarball

Usage: npm_upstream.py DIR PORT_FILE (see registry_http.py). Unscoped
names only.
"""

import base64
import hashlib
import json
import os
import sys
import tarfile

from registry_http import NOT_FOUND, serve


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

    def get(path, base):
        path = path.lstrip("/")
        if "/-/" in path:
            file = os.path.join(directory, os.path.basename(path))
            if os.path.isfile(file):
                return 200, "application/octet-stream", open(file, "rb").read()
            return NOT_FOUND
        doc = packuments(directory, base).get(path)
        if doc is None:
            return NOT_FOUND
        return 200, "application/json", json.dumps(doc).encode()

    serve(port_file, get)


if __name__ == "__main__":
    main()
