#!/usr/bin/env python3
"""A loopback stand-in for the Hugging Face hub, for the hub download tests (standard library only).

Serves ROOT/<repo>/<files>, <repo> being org/name (a model), datasets/org/name or spaces/org/name, with
the hub's URL layout and headers: HEAD/GET /<repo>/resolve/<revision>/<file>, revision `main` or the
repo's commit (ROOT/<repo>/.commit if present, else the sha1 of the repo path).
- a "git" file: 200, ETag W/"<git blob sha1>", X-Repo-Commit, Content-Length;
- an "LFS" file (.safetensors, .bin, .model): 302 to /lfs/<sha256> on a second server (another origin,
  as the hub's CDN is), X-Linked-Etag "<sha256>", X-Linked-Size, X-Repo-Commit. The CDN refuses a
  request that carries an Authorization header (the token must not leave the hub);
- a missing file: 404 X-Error-Code EntryNotFound (with X-Repo-Commit), an unknown revision: 404
  RevisionNotFound, an unknown repo: 401 RepoNotFound (as the hub answers without a token).
GET bodies honour `Range: bytes=N-` (206). Prints the hub's port on stdout once listening.

Fault switches: --token T (401 unless `Authorization: Bearer T`), --drop-at N (a GET body stops at file
offset N and the connection closes; --drop-times K of them, -1 for all), --stall (at that offset, go
silent instead of closing), --corrupt (one byte of every body flipped), --rename OLD=NEW (a relative
307 from repo OLD to NEW), --log FILE (one JSON line per request), --tls CERT KEY (HTTPS on both).
"""
import argparse
import hashlib
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_SUFFIXES = (".safetensors", ".bin", ".model")


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.drops_left = args.drop_times
        self.cdn_port = 0

    def take_drop(self):
        """Whether this GET is one that drops (counting it)."""
        if self.args.drop_at is None:
            return False
        with self.lock:
            if self.drops_left == 0:
                return False
            if self.drops_left > 0:
                self.drops_left -= 1
            return True

    def log(self, record):
        if not self.args.log:
            return
        with self.lock, open(self.args.log, "a") as f:
            f.write(json.dumps(record) + "\n")


def repo_commit(repo_dir, repo):
    path = os.path.join(repo_dir, ".commit")
    if os.path.isfile(path):
        with open(path) as f:
            return f.read().strip()
    return hashlib.sha1(repo.encode()).hexdigest()


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def find_lfs(root, sha):
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(LFS_SUFFIXES):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    data = f.read()
                if hashlib.sha256(data).hexdigest() == sha:
                    return data
    return None


class Handler(BaseHTTPRequestHandler):
    state = None
    role = "hub"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.route(head=True)

    def do_GET(self):
        self.route(head=False)

    def route(self, head):
        st = self.state
        st.log({"server": self.role, "method": self.command, "path": self.path,
                "authorization": self.headers.get("Authorization"), "range": self.headers.get("Range"),
                "user_agent": self.headers.get("User-Agent")})
        if self.role == "cdn":
            return self.serve_cdn(head)
        path = urllib.parse.urlsplit(self.path).path
        if "/resolve/" not in path:
            return self.reply(404, {})
        repo, rest = path.split("/resolve/", 1)
        repo = repo.strip("/")
        for rename in st.args.rename:
            old, new = rename.split("=", 1)
            if repo == old:
                return self.reply(307, {"Location": "/%s/resolve/%s" % (new, rest)})
        if st.args.token and self.headers.get("Authorization") != "Bearer " + st.args.token:
            return self.reply(401, {"X-Error-Code": "GatedRepo"})
        repo_dir = os.path.join(st.args.root, repo)
        if not os.path.isdir(repo_dir):
            return self.reply(401, {"X-Error-Code": "RepoNotFound"})
        revision, _, filename = rest.partition("/")
        revision, filename = urllib.parse.unquote(revision), urllib.parse.unquote(filename)
        commit = repo_commit(repo_dir, repo)
        if revision not in ("main", commit):
            return self.reply(404, {"X-Error-Code": "RevisionNotFound"})
        file_path = os.path.join(repo_dir, filename)
        if not os.path.isfile(file_path) or filename == ".commit":
            return self.reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        with open(file_path, "rb") as f:
            data = f.read()
        if filename.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            scheme = "https" if st.args.tls else "http"
            return self.reply(302, {"Location": "%s://127.0.0.1:%d/lfs/%s" % (scheme, st.cdn_port, sha),
                                    "X-Linked-Etag": '"%s"' % sha, "X-Linked-Size": str(len(data)),
                                    "X-Repo-Commit": commit, "ETag": '"%s"' % git_blob_sha1(b"pointer")})
        self.send_data(data, {"ETag": 'W/"%s"' % git_blob_sha1(data), "X-Repo-Commit": commit}, head)

    def serve_cdn(self, head):
        if self.headers.get("Authorization"):
            return self.reply(400, {"X-Error": "authorization header sent to the CDN"})
        sha = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
        data = find_lfs(self.state.args.root, sha)
        if data is None:
            return self.reply(404, {})
        self.send_data(data, {"ETag": '"%s"' % sha}, head)

    def reply(self, status, headers):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_data(self, data, headers, head):
        st = self.state
        if st.args.corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        rng = self.headers.get("Range")
        if rng and not head:
            start = int(rng.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                return self.reply(416, {"Content-Range": "bytes */%d" % len(data)})
        self.send_response(206 if start else 200)
        for k, v in headers.items():
            self.send_header(k, v)
        if start:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if head:
            return
        if st.take_drop():
            stop = max(start, min(st.args.drop_at, len(data)))
            self.wfile.write(data[start:stop])
            self.wfile.flush()
            if st.args.stall:
                time.sleep(30)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data[start:])


def serve(state, role):
    handler = type("Bound" + role, (Handler,), {"state": state, "role": role})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if state.args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*state.args.tls)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root")
    p.add_argument("--token")
    p.add_argument("--drop-at", type=int)
    p.add_argument("--drop-times", type=int, default=1)
    p.add_argument("--stall", action="store_true")
    p.add_argument("--corrupt", action="store_true")
    p.add_argument("--rename", action="append", default=[])
    p.add_argument("--log")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    state = State(p.parse_args())
    state.cdn_port = serve(state, "cdn")
    print(serve(state, "hub"), flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
