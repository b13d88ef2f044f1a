"""A local Maven repository for tests: the files below a directory, as they
are (a repository layout is static).

Usage: static_upstream.py DIR PORT_FILE (see registry_http.py).
"""

import os
import sys

from registry_http import NOT_FOUND, serve


def main():
    directory, port_file = os.path.realpath(sys.argv[1]), sys.argv[2]

    def get(path, base):
        file = os.path.realpath(os.path.join(directory, path.lstrip("/")))
        if not file.startswith(directory + os.sep) or not os.path.isfile(file):
            return NOT_FOUND
        return 200, "application/octet-stream", open(file, "rb").read()

    serve(port_file, get)


if __name__ == "__main__":
    main()
