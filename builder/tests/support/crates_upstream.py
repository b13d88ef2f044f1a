"""A local cargo registry for tests: a sparse index of the .crate files in a
directory, and the files.

GET /config.json                         {"dl": BASE/crates/{crate}/{version}/download, "api": null}
GET /<index path of NAME>                one JSON line per version, from each crate's Cargo.toml
GET /crates/<name>/<version>/download    the .crate

Usage: crates_upstream.py DIR PORT_FILE (see registry_http.py). Files are NAME-VERSION.crate.
"""

import hashlib
import json
import os
import sys
import tarfile
import tomllib

from registry_http import NOT_FOUND, serve


def index_path(name):
    name = name.lower()
    if len(name) <= 2:
        return f"{len(name)}/{name}"
    if len(name) == 3:
        return f"3/{name[0]}/{name}"
    return f"{name[:2]}/{name[2:4]}/{name}"


def dependencies(manifest):
    """The index's `deps` from a (normalised) Cargo.toml."""
    tables = [(None, manifest)]
    for target, table in manifest.get("target", {}).items():
        tables.append((target, table))
    deps = []
    for target, table in tables:
        for section, kind in (
            ("dependencies", "normal"),
            ("dev-dependencies", "dev"),
            ("build-dependencies", "build"),
        ):
            for key, spec in table.get(section, {}).items():
                if isinstance(spec, str):
                    spec = {"version": spec}
                dep = {
                    "name": key,
                    "req": spec.get("version", "*"),
                    "features": spec.get("features", []),
                    "optional": spec.get("optional", False),
                    "default_features": spec.get(
                        "default-features", spec.get("default_features", True)
                    ),
                    "target": target,
                    "kind": kind,
                }
                if "package" in spec:
                    # A renamed dependency: the index names it by the
                    # manifest's key, as its features do, and keeps the
                    # crate's own name in `package`.
                    dep["package"] = spec["package"]
                deps.append(dep)
    return deps


# path -> ((size, mtime), (name, index line)): a directory of many crates
# is read once, not on every request.
_parsed = {}


def entries(directory):
    """Index lines by crate name, from every .crate in the directory."""
    index = {}
    for file in sorted(os.listdir(directory)):
        if not file.endswith(".crate"):
            continue
        path = os.path.join(directory, file)
        stat = os.stat(path)
        key = (stat.st_size, stat.st_mtime_ns)
        if path not in _parsed or _parsed[path][0] != key:
            _parsed[path] = (key, entry_of(path))
        name, line = _parsed[path][1]
        index.setdefault(name, []).append(line)
    return index


def entry_of(path):
    """A .crate's (lower-case name, index line)."""
    data = open(path, "rb").read()
    with tarfile.open(path, "r:gz") as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        manifest = tomllib.load(tar.extractfile(f"{top}/Cargo.toml"))
    package = manifest["package"]
    entry = {
        "name": package["name"],
        "vers": package["version"],
        "deps": dependencies(manifest),
        "cksum": hashlib.sha256(data).hexdigest(),
        "features": manifest.get("features", {}),
        "yanked": False,
        "links": package.get("links"),
    }
    if "rust-version" in package:
        entry["rust_version"] = package["rust-version"]
    return package["name"].lower(), json.dumps(entry)


def main():
    directory, port_file = sys.argv[1], sys.argv[2]

    def get(path, base):
        path = path.lstrip("/")
        if path == "config.json":
            config = {"dl": base + "/crates/{crate}/{version}/download", "api": None}
            return 200, "application/json", json.dumps(config).encode()
        parts = path.split("/")
        if len(parts) == 4 and parts[0] == "crates" and parts[3] == "download":
            file = os.path.join(directory, f"{parts[1]}-{parts[2]}.crate")
            if "/" not in parts[1] + parts[2] and os.path.isfile(file):
                return 200, "application/x-tar", open(file, "rb").read()
            return NOT_FOUND
        name = parts[-1].lower()
        lines = entries(directory).get(name)
        if lines is None or index_path(name) != path.lower():
            return NOT_FOUND
        return 200, "text/plain", ("\n".join(lines) + "\n").encode()

    serve(port_file, get)


if __name__ == "__main__":
    main()
