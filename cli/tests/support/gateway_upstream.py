"""One local upstream for the gateway's tests, on 127.0.0.1, serving real
packages from directories (fetched by the ordinary clients at test time):

/npm/<name>, /npm/@scope%2fname   packuments built from the tarballs'
                                   package.json (re-read on every request)
/npm/<name>/-/<file>.tgz          tarballs (scoped: /npm/@scope/name/-/...)
/pypi/simple/<project>/           PEP 691 JSON of the files in the directory
/pypi/files/<file>                the files
/maven/<path>                     the files below any of the Maven roots, with
                                  .sha1/.md5 computed when a root has none;
                                  maven-metadata.xml from a local repository's
                                  maven-metadata-<repo>.xml
/v2/<name>/manifests/<ref>        an OCI image layout's index (tag = the
/v2/<name>/blobs/<digest>         layout's org.opencontainers.image.ref.name)

Usage: gateway_upstream.py CONFIG_JSON PORT_FILE, CONFIG_JSON holding
{"npm": DIR, "pypi": DIR, "maven": [DIR, ...], "oci": DIR}.
"""

import base64
import glob
import hashlib
import http.server
import json
import os
import re
import sys
import tarfile
import urllib.parse


def normalise(name):
    return re.sub(r"[-_.]+", "-", name).lower()


class Upstream:
    def __init__(self, config):
        self.npm = config.get("npm")
        self.pypi = config.get("pypi")
        self.maven = [os.path.realpath(d) for d in config.get("maven", [])]
        self.oci = config.get("oci")

    # npm ---------------------------------------------------------------
    def packument(self, name, base):
        doc = {"name": name, "versions": {}, "dist-tags": {}}
        for file in sorted(os.listdir(self.npm)):
            if not file.endswith(".tgz"):
                continue
            path = os.path.join(self.npm, file)
            with tarfile.open(path, "r:gz") as tar:
                member = next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/package.json"))
                manifest = json.load(tar.extractfile(member))
            if manifest["name"] != name:
                continue
            data = open(path, "rb").read()
            version = manifest["version"]
            short = name.split("/")[-1]
            manifest["dist"] = {
                "tarball": f"{base}/npm/{name}/-/{short}-{version}.tgz",
                "integrity": "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode(),
                "shasum": hashlib.sha1(data).hexdigest(),
            }
            doc["versions"][version] = manifest
            doc["dist-tags"]["latest"] = version
        return doc if doc["versions"] else None

    def npm_get(self, path, base):
        if "/-/" in path:
            name, file = path.split("/-/", 1)
            doc = self.packument(name, base)
            if doc:
                for v in doc["versions"].values():
                    if v["dist"]["tarball"].endswith("/" + file):
                        local = self.tarball_file(name, v["version"])
                        return 200, {"Content-Type": "application/octet-stream"}, open(local, "rb").read()
            return None
        doc = self.packument(path, base)
        if not doc:
            return None
        return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()

    def tarball_file(self, name, version):
        for file in os.listdir(self.npm):
            path = os.path.join(self.npm, file)
            if not file.endswith(".tgz"):
                continue
            with tarfile.open(path, "r:gz") as tar:
                member = next(m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/package.json"))
                m = json.load(tar.extractfile(member))
            if m["name"] == name and m["version"] == version:
                return path
        return None

    # PyPI --------------------------------------------------------------
    def pypi_get(self, path, base):
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "simple":
            project = normalise(parts[1])
            files = []
            for file in sorted(os.listdir(self.pypi)):
                stem = file[:-4] if file.endswith(".whl") else file[: -len(".tar.gz")] if file.endswith(".tar.gz") else None
                if stem is None:
                    continue
                dist = stem.split("-")[0] if file.endswith(".whl") else stem.rsplit("-", 1)[0]
                if normalise(dist) != project:
                    continue
                data = open(os.path.join(self.pypi, file), "rb").read()
                files.append({
                    "filename": file,
                    "url": f"{base}/pypi/files/{file}",
                    "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
                })
            if not files:
                return None
            doc = {"meta": {"api-version": "1.0"}, "name": project, "files": files}
            return 200, {"Content-Type": "application/vnd.pypi.simple.v1+json"}, json.dumps(doc).encode()
        if len(parts) == 2 and parts[0] == "files":
            file = os.path.join(self.pypi, os.path.basename(parts[1]))
            if os.path.isfile(file):
                return 200, {"Content-Type": "application/octet-stream"}, open(file, "rb").read()
        return None

    # Maven -------------------------------------------------------------
    def maven_get(self, path):
        rel = path.lstrip("/")
        for root in self.maven:
            file = os.path.realpath(os.path.join(root, rel))
            if not file.startswith(root + os.sep):
                return None
            if os.path.isfile(file):
                return 200, {"Content-Type": "application/octet-stream"}, open(file, "rb").read()
            for alg in ("sha1", "md5"):
                if rel.endswith("." + alg) and os.path.isfile(file[: -len(alg) - 1]):
                    data = open(file[: -len(alg) - 1], "rb").read()
                    return 200, {"Content-Type": "text/plain"}, hashlib.new(alg, data).hexdigest().encode()
            if rel.endswith("maven-metadata.xml"):
                found = glob.glob(os.path.join(os.path.dirname(file), "maven-metadata-*.xml"))
                if found:
                    return 200, {"Content-Type": "text/xml"}, open(found[0], "rb").read()
        return None

    # OCI ---------------------------------------------------------------
    def blob(self, digest):
        alg, _, hexd = digest.partition(":")
        if alg != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexd):
            return None
        path = os.path.join(self.oci, "blobs", "sha256", hexd)
        return open(path, "rb").read() if os.path.isfile(path) else None

    def oci_get(self, path):
        m = re.fullmatch(r"/(.+)/(manifests|blobs)/([^/]+)", path)
        if not m:
            return (200, {"Content-Type": "application/json"}, b"{}") if path in ("", "/") else None
        name, kind, ref = m.groups()
        index = json.load(open(os.path.join(self.oci, "index.json")))
        if kind == "manifests":
            digest = ref
            if not ref.startswith("sha256:"):
                digest = None
                for d in index["manifests"]:
                    annotations = d.get("annotations", {})
                    if annotations.get("org.opencontainers.image.ref.name") == ref and annotations.get("name", name) == name:
                        digest = d["digest"]
            data = self.blob(digest) if digest else None
            if data is None:
                return 404, {"Content-Type": "application/json"}, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}'
            media = json.loads(data).get("mediaType", "application/vnd.oci.image.manifest.v1+json")
            return 200, {"Content-Type": media, "Docker-Content-Digest": "sha256:" + hashlib.sha256(data).hexdigest()}, data
        data = self.blob(ref)
        if data is None:
            return 404, {"Content-Type": "application/json"}, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}'
        return 200, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": ref}, data

    def get(self, raw_path, base):
        # npm scoped packuments arrive as @scope%2fname: decode after splitting off the prefix.
        path = urllib.parse.unquote(raw_path.split("?")[0])
        for prefix, handler in (
            ("/npm/", lambda p: self.npm_get(p, base)),
            ("/pypi/", lambda p: self.pypi_get(p, base)),
            ("/maven/", self.maven_get),
            ("/v2", self.oci_get),
        ):
            if path.startswith(prefix):
                try:
                    return handler(path[len(prefix):])
                except (OSError, StopIteration, KeyError, ValueError):
                    return None
        return None


def make_oci_image(directory, name, tag, big=0):
    """A two-platform OCI image index (linux/amd64, linux/arm64): a shared
    base layer and one layer per platform, each a gzipped tar; with `big`,
    amd64 gets one more layer of that many random bytes (for benchmarks)."""
    import gzip
    import io

    blobs = os.path.join(directory, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + d, "size": len(data)}

    def layer(files):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path, content in files:
                info = tarfile.TarInfo(path)
                info.size, info.mtime, info.mode = len(content), 0, 0o644
                tar.addfile(info, io.BytesIO(content))
        return gzip.compress(raw.getvalue(), mtime=0)

    base = layer([("etc/os-release", b"NAME=pyrsia-test\n")] + [(f"usr/share/doc/{i}.txt", os.urandom(4096)) for i in range(16)])
    manifests = []
    for arch in ("amd64", "arm64"):
        top = layer([(f"hello-{arch}.txt", f"hello from {arch}\n".encode())])
        layers = [dict(put(base), mediaType="application/vnd.oci.image.layer.v1.tar+gzip"),
                  dict(put(top), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")]
        diff_ids = ["sha256:" + hashlib.sha256(gzip.decompress(b)).hexdigest() for b in (base, top)]
        if big and arch == "amd64":
            blob = os.urandom(big)
            layers.append(dict(put(blob), mediaType="application/vnd.oci.image.layer.v1.tar"))
            diff_ids.append(layers[-1]["digest"])
        config = json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
                             "config": {"Cmd": ["cat", f"/hello-{arch}.txt"]}}, sort_keys=True).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": dict(put(config), mediaType="application/vnd.oci.image.config.v1+json"),
                               "layers": layers}, sort_keys=True).encode()
        manifests.append(dict(put(manifest), mediaType="application/vnd.oci.image.manifest.v1+json",
                              platform={"architecture": arch, "os": "linux"}))
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": manifests}, sort_keys=True).encode()
    entry = dict(put(index), mediaType="application/vnd.oci.image.index.v1+json",
                 annotations={"org.opencontainers.image.ref.name": tag, "name": name})
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [entry]}, f)
    with open(os.path.join(directory, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(entry["digest"])


def main():
    if sys.argv[1] == "make-oci":
        make_oci_image(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 0)
        return
    config = json.load(open(sys.argv[1]))
    port_file = sys.argv[2]
    upstream = Upstream(config)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, send_body):
            r = upstream.get(self.path, f"http://127.0.0.1:{self.server.server_port}")
            status, headers, body = r if r else (404, {"Content-Type": "text/plain"}, b"not found")
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def do_GET(self):
            self.answer(True)

        def do_HEAD(self):
            self.answer(False)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # clients closing kept-alive connections

    server = Server(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_port))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
