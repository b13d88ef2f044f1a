#!/usr/bin/env python3
"""Malicious CometBFT JSON-RPC proxy: a TEST ATTACKER for light-client end-to-end tests.

It sits between a client and an honest CometBFT v0.38 node and lies in one way,
chosen by --mode; everything a mode does not mention is forwarded unchanged.

  honest    forward everything.
  value     every abci_query is answered by --attacker (a second chain, same chain id,
            other validators): value and proof are self-consistent but for another state.
  header    commit, validators, block, header, blockchain and status are answered by
            --attacker (headers signed by keys outside the honest validator set).
  unsigned  commit answers keep only the first floor(2n/3) BLOCK_ID_FLAG_COMMIT signatures
            of n entries; the others become absent entries.
  stale     pretend to be --lag blocks behind: latest-height abci_query is pinned to L-lag
            and status reports latest_block_height L-lag.
  otherkey  abci_query is forwarded with params.path replaced by --other-path.
  relabel   like otherkey, but the answer's response.key claims the requested path.
  valset    every validators request is answered by --attacker.

Usage: lying_rpc.py --upstream URL --mode MODE [--attacker URL] [--other-path PATH]
                    [--lag N] [--port P]
Prints "listening <port>" on stdout once serving; logs one stderr line per rewritten answer.
GET URI-style requests (GET /status, GET /commit?height=5) are routed like their method
and get the same answer rewrites, but their query string is never changed.
"""
import argparse
import base64
import json
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("honest", "value", "header", "unsigned", "stale", "otherkey", "relabel", "valset")
ATTACKER_METHODS = {
    "value": {"abci_query"},
    "header": {"commit", "validators", "block", "header", "blockchain", "status"},
    "valset": {"validators"},
}
ABSENT = {"block_id_flag": 1, "validator_address": "", "timestamp": "0001-01-01T00:00:00Z", "signature": None}
ARGS = None


def log(msg):
    print(f"lying_rpc[{ARGS.mode}]: {msg}", file=sys.stderr, flush=True)


def forward(base, path, method, body):
    """Send one HTTP request to base+path; return (status, body bytes) or None if unreachable."""
    req = urllib.request.Request(base.rstrip("/") + path, data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (OSError, ValueError):
        return None


def upstream_height():
    call = json.dumps({"jsonrpc": "2.0", "id": "lying-rpc-status", "method": "status", "params": {}})
    got = forward(ARGS.upstream, "/", "POST", call.encode())
    if got is None or got[0] != 200:
        raise OSError("cannot read upstream status")
    return int(json.loads(got[1])["result"]["sync_info"]["latest_block_height"])


def is_latest(height):
    return height in (None, "", "0", 0)


def rewrite_request(rpc, params):
    """Apply request-side lies to params (a dict, edited in place); return a log note or None."""
    if rpc != "abci_query":
        return None
    if ARGS.mode in ("otherkey", "relabel"):
        old, params["path"] = params.get("path"), ARGS.other_path
        return f"abci_query path {old!r} -> {ARGS.other_path!r}"
    if ARGS.mode == "stale" and is_latest(params.get("height")):
        params["height"] = str(max(1, upstream_height() - ARGS.lag))
        return f"abci_query latest height -> {params['height']}"
    return None


def is_commit_flag(flag):
    return flag in (2, "2", "BLOCK_ID_FLAG_COMMIT")


def rewrite_result(rpc, result, asked_path):
    """Apply answer-side lies to a JSON-RPC result (edited in place); return a log note or None."""
    if ARGS.mode == "unsigned" and rpc == "commit":
        sigs = result["signed_header"]["commit"]["signatures"]
        keep, kept = len(sigs) * 2 // 3, 0
        for i, sig in enumerate(sigs):
            if is_commit_flag(sig.get("block_id_flag")) and kept < keep:
                kept += 1
            else:
                absent = dict(ABSENT)
                if isinstance(sig.get("block_id_flag"), str) and not sig["block_id_flag"].isdigit():
                    absent["block_id_flag"] = "BLOCK_ID_FLAG_ABSENT"
                sigs[i] = absent
        return f"commit signatures: kept {kept} of {len(sigs)}"
    if ARGS.mode == "stale" and rpc == "status":
        info = result["sync_info"]
        old = int(info["latest_block_height"])
        info["latest_block_height"] = str(max(1, old - ARGS.lag))
        return f"status latest_block_height {old} -> {info['latest_block_height']}"
    if ARGS.mode == "relabel" and rpc == "abci_query" and asked_path is not None:
        resp = result["response"]
        old, resp["key"] = resp.get("key"), base64.b64encode(asked_path.encode()).decode()
        return f"abci_query response.key {old!r} -> {resp['key']!r}"
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):  # keep stderr for the rewrite log only
        pass

    def reply(self, status, payload):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        rpc = urllib.parse.urlsplit(self.path).path.strip("/")
        self.relay(rpc, None, None, None)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            call = json.loads(body)
        except ValueError:
            call = None
        if not isinstance(call, dict):  # batch or garbage: not our business
            return self.relay(None, body, None, None)
        rpc, notes = call.get("method"), []
        params = call.get("params")
        if params is None:
            params = call["params"] = {}
        asked_path = params.get("path") if isinstance(params, dict) else None
        try:
            note = rewrite_request(rpc, params) if isinstance(params, dict) else None
        except (OSError, ValueError, KeyError, TypeError) as err:
            return self.reply(502, {"jsonrpc": "2.0", "id": call.get("id"),
                                    "error": {"code": -32603, "message": f"lying_rpc: {err}"}})
        if note:
            notes.append(note)
            body = json.dumps(call).encode()
        self.relay(rpc, body, call, notes, asked_path)

    def relay(self, rpc, body, call, notes, asked_path=None):
        notes = notes or []
        target = ARGS.upstream
        if rpc in ATTACKER_METHODS.get(ARGS.mode, ()):
            target = ARGS.attacker
            notes.append(f"{rpc} answered by attacker {target}")
        got = forward(target, self.path, self.command, body)
        if got is None:
            rid = call.get("id") if call else None
            return self.reply(502, {"jsonrpc": "2.0", "id": rid,
                                    "error": {"code": -32603, "message": f"upstream {target} unreachable"}})
        status, data = got
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            changed = bool(notes)
            if call is not None and answer.get("id") != call.get("id"):
                answer["id"], changed = call.get("id"), True
            if isinstance(answer.get("result"), dict):
                try:
                    note = rewrite_result(rpc, answer["result"], asked_path)
                except (KeyError, TypeError, ValueError, AttributeError):
                    note = None
                if note:
                    notes.append(note)
                    changed = True
            if changed:
                data = json.dumps(answer).encode()
        if notes:
            log("; ".join(notes))
        self.reply(status, data)


def main():
    global ARGS
    ap = argparse.ArgumentParser(description="Lying CometBFT RPC proxy (test attacker).")
    ap.add_argument("--upstream", required=True, help="honest node RPC URL")
    ap.add_argument("--mode", required=True, choices=MODES)
    ap.add_argument("--attacker", help="attacker node RPC URL (value, header, valset)")
    ap.add_argument("--other-path", help="abci_query path to substitute (otherkey, relabel)")
    ap.add_argument("--lag", type=int, default=5, help="blocks behind in stale mode (default 5)")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free)")
    ARGS = ap.parse_args()
    if ARGS.mode in ATTACKER_METHODS and not ARGS.attacker:
        ap.error(f"--attacker is required for --mode {ARGS.mode}")
    if ARGS.mode in ("otherkey", "relabel") and ARGS.other_path is None:
        ap.error(f"--other-path is required for --mode {ARGS.mode}")
    if ARGS.lag < 0:
        ap.error("--lag must be >= 0")

    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
