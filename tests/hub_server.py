"""A Hugging Face Hub-compatible HTTP server for tests, standard library only (see docs/hf-notes.md).

It carries the real clients (`huggingface_hub`, `datasets`, `diffusers`) through what this package uses:
`whoami-v2`, `repos/create` / `repos/delete`, `preupload` (parquet/safetensors/bin and large files answered as
LFS), the LFS batch API and object PUTs, NDJSON `commit` (applied whole or not at all), repo info
(`revision/{rev}`), `tree`, `paths-info`, `refs`, `commits`, `resolve` (HEAD/GET, byte ranges) and
`validate-yaml`. Everything lives in memory.

Clients need `HF_ENDPOINT=server.url`, `HF_HUB_DISABLE_XET=1` and any `HF_TOKEN`, set before they import the HF
libraries. `fail(endpoint, times)` makes the next calls of an endpoint answer HTTP 500, to test retries.

    server = HubServer().start()      # 127.0.0.1, random port
    ...
    server.stop()
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from urllib.request import Request, urlopen

LFS_SUFFIXES = (".parquet", ".safetensors", ".bin", ".pt", ".arrow")
LFS_MIN_SIZE = 10 * 1024 * 1024
REPO_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/(.*))?$")
_LFS_BATCH = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_RESOLVE = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


@dataclass
class StoredFile:
    data: bytes
    lfs: bool

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Commit:
    oid: str
    title: str
    files: dict[str, StoredFile]
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: list[Commit]

    def find(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision in ("main", "refs/heads/main"):
            return self.commits[-1]
        return next((c for c in self.commits if c.oid == revision), None)


class HubServer:
    """In-memory Hub on `127.0.0.1`; `url` is the value for `HF_ENDPOINT`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.faults: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.RLock()
        self.httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(self, endpoint: str, times: int = 1, status: int = 500) -> None:
        """The next `times` calls of `endpoint` (`commit`, `preupload`, `lfs-batch`, `lfs-upload`, `create`,
        `resolve`, `info`) answer `status`."""
        with self.lock:
            self.faults[endpoint] = [status] * times

    def files(self, repo_type: str, repo_id: str) -> dict[str, bytes]:
        """`{path: content}` at the head of a repo (empty if it does not exist)."""
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
            return {path: f.data for path, f in repo.commits[-1].files.items()} if repo else {}

    def num_commits(self, repo_type: str, repo_id: str) -> int:
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
            return len(repo.commits) if repo else 0


def client_env(server: HubServer, hf_home: str, threads: int = 1) -> dict[str, str]:
    """Environment of a client subprocess of `server`: this process's, online, with the variables the clients need
    (read by the HF libraries at import time) and its own `HF_HOME` cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_TOKEN="hf_test_token", HF_HOME=hf_home,
               HF_HUB_DISABLE_PROGRESS_BARS="1", OMP_NUM_THREADS=str(threads))  # fmt: skip
    return env


def arm_fault(endpoint: str, times: int) -> None:
    """From a client: makes the next `times` calls of `endpoint` fail (see [`HubServer.fail`]); 0 disarms."""
    request = Request(f"{os.environ['HF_ENDPOINT']}/_test/fail", method="POST",
                      data=json.dumps({"endpoint": endpoint, "times": times}).encode(),
                      headers={"Content-Type": "application/json"})  # fmt: skip
    urlopen(request).read()


def _make_handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        hub = server

    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    # -- plumbing ------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        status = 500
        try:
            status = self._route(method, unquote(url.path) if method != "PUT" else url.path)
        except _HTTPError as error:
            status = error.status
            self._json(
                error.status, {"error": error.message}, {"X-Error-Code": error.code, "X-Error-Message": error.message}
            )
        except Exception as error:  # report, never hang the client
            self._json(500, {"error": repr(error)})
        with self.hub.lock:
            self.hub.requests.append((method, self.path, status))

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> int:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> int:
        return self._send(
            status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
        )

    def _payload(self):
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return parse_qs(self.body.decode())
        return json.loads(self.body or b"{}")

    def _fault(self, endpoint: str) -> None:
        with self.hub.lock:
            pending = self.hub.faults.get(endpoint)
            if pending:
                raise _HTTPError(pending.pop(0), "InjectedFault", f"injected failure of {endpoint}")

    def _authorised(self) -> None:
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            raise _HTTPError(401, "Unauthorized", "Invalid credentials in Authorization header")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            raise _HTTPError(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.find(revision)
        if commit is None:
            raise _HTTPError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # -- routes --------------------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> int:
        if path == "/api/whoami-v2":
            self._authorised()
            return self._json(200, {"type": "user", "name": "tester", "fullname": "Tester", "orgs": [],
                                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})  # fmt: skip
        if path == "/api/repos/create" and method == "POST":
            return self._create_repo()
        if path == "/api/repos/delete" and method == "DELETE":
            payload = self._payload()
            with self.hub.lock:
                self.hub.repos.pop(
                    (payload.get("type") or "model", f"{payload['organization']}/{payload['name']}"), None
                )
            return self._json(200, {})
        if path == "/_test/fail" and method == "POST":  # lets a client process arm a fault
            payload = self._payload()
            self.hub.fail(payload["endpoint"], int(payload.get("times", 1)), int(payload.get("status", 500)))
            return self._json(200, {})
        if path == "/api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        if path.startswith("/_lfs/") and method == "PUT":
            return self._lfs_put(path[len("/_lfs/") :])
        if match := _LFS_BATCH.match(path):
            return self._lfs_batch(match.group(2))
        if match := _RESOLVE.match(path):
            repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(match.group(1), "model")
            return self._resolve(method, repo_type, match.group(2), match.group(3), match.group(4))
        if match := _API.match(path):
            repo_type = match.group(1)[:-1]
            return self._api(method, repo_type, match.group(2), match.group(3) or "")
        raise _HTTPError(404, "NotFound", f"no route for {method} {path}")

    def _create_repo(self) -> int:
        self._authorised()
        self._fault("create")
        payload = self._payload()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
        url = f"{self.hub.url}/{REPO_PREFIX[repo_type]}{repo_id}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                return self._json(409, {"error": "You already created this repo", "url": url})
            initial = Commit(uuid.uuid4().hex + "00000000", "initial commit",
                             {".gitattributes": StoredFile(b"*.parquet filter=lfs diff=lfs merge=lfs -text\n", False)})  # fmt: skip
            self.hub.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, bool(payload.get("private")), [initial])
        return self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _api(self, method: str, repo_type: str, repo_id: str, rest: str) -> int:
        with self.hub.lock:
            repo = self._repo(repo_type, repo_id)
            if rest == "" or rest.startswith("revision/"):
                self._fault("info")
                return self._info(repo, rest[len("revision/") :] or "main")
            action, _, tail = rest.partition("/")
            if action == "preupload":
                self._fault("preupload")
                files = self._payload()["files"]
                return self._json(200, {"files": [
                    {"path": f["path"], "uploadMode": _upload_mode(f["path"], f["size"]), "shouldIgnore": False}
                    for f in files
                ]})  # fmt: skip
            if action == "commit" and method == "POST":
                self._authorised()
                self._fault("commit")
                return self._commit(repo, tail)
            if action == "tree":
                revision, _, prefix = tail.partition("/")
                entries = _tree(
                    self._commit_of(repo, revision),
                    prefix,
                    bool(self.query.get("recursive", [""])[0] in ("1", "true", "True")),
                )
                return self._json(200, entries)
            if action == "paths-info":
                commit = self._commit_of(repo, tail)
                wanted = self._payload().get("paths", [])
                wanted = [wanted] if isinstance(wanted, str) else wanted
                return self._json(200, [e for e in _tree(commit, "", recursive=True) if e["path"] in wanted])
            if action == "refs":
                return self._json(200, {"branches": [{"name": "main", "ref": "refs/heads/main",
                                                      "targetCommit": repo.commits[-1].oid}], "tags": [], "converts": []})  # fmt: skip
            if action == "commits":
                commits = reversed(repo.commits[: repo.commits.index(self._commit_of(repo, tail)) + 1])
                return self._json(200, [{"id": c.oid, "title": c.title, "message": c.title, "date": c.date,
                                         "authors": [{"user": "tester"}]} for c in commits])  # fmt: skip
        raise _HTTPError(404, "NotFound", f"no route for {method} /api/{repo_type}s/{repo_id}/{rest}")

    def _info(self, repo: Repo, revision: str) -> int:
        commit = self._commit_of(repo, revision)
        siblings = [{"rfilename": path, "size": len(f.data), "blobId": f.git_oid,
                     **({"lfs": {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}} if f.lfs else {})}
                    for path, f in sorted(commit.files.items())]  # fmt: skip
        return self._json(200, {
            "_id": repo.repo_id, "id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.oid,
            "lastModified": commit.date, "createdAt": repo.commits[0].date, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        })  # fmt: skip

    def _commit(self, repo: Repo, revision: str) -> int:
        if unquote(revision) != "main":
            raise _HTTPError(400, "BadRequest", "this server only commits to main")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        files = dict(repo.commits[-1].files)
        title = "commit"
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                title = value.get("summary") or title
            elif key == "file":
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                data = self.hub.lfs_objects.get(value["oid"])
                if data is None:
                    raise _HTTPError(422, "LfsObjectMissing", f"LFS object {value['oid']} was not uploaded")
                files[value["path"]] = StoredFile(data, True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: f for p, f in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise _HTTPError(400, "BadRequest", f"unknown commit operation {key}")
        commit = Commit(hashlib.sha1(uuid.uuid4().bytes).hexdigest(), title, files)
        repo.commits.append(commit)  # the whole commit, or (on any error above) nothing
        prefix = REPO_PREFIX[repo.repo_type]
        return self._json(200, {"commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{commit.oid}",
                                "commitOid": commit.oid, "pullRequestUrl": None})  # fmt: skip

    def _lfs_batch(self, repo_id: str) -> int:
        self._fault("lfs-batch")
        payload = self._payload()
        objects = []
        for obj in payload.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/_lfs/{obj['oid']}", "expires_in": 3600}}
            objects.append(entry)
        return self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, oid: str) -> int:
        self._fault("lfs-upload")
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise _HTTPError(400, "BadRequest", "sha256 of the body does not match the object id")
        with self.hub.lock:
            self.hub.lfs_objects[oid] = self.body
        return self._send(200, b"")

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> int:
        self._fault("resolve")
        with self.hub.lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_of(repo, revision)
            stored = commit.files.get(path)
        if stored is None:
            raise _HTTPError(404, "EntryNotFound", f"{path} does not exist on {revision}")
        etag = stored.sha256 if stored.lfs else stored.git_oid
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}  # fmt: skip
        if stored.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(stored.data))})
        data, status = stored.data, 200
        if match := re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range", "")):
            start = int(match.group(1) or 0)
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            if not match.group(1):  # suffix range: the last N bytes
                start, end = max(0, len(data) - int(match.group(2))), len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
            data, status = data[start : end + 1], 206
        headers["Content-Length"] = str(len(data))
        return self._send(status, data, headers)


class _HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _upload_mode(path: str, size: int) -> str:
    return "lfs" if path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE else "regular"


def _tree(commit: Commit, prefix: str, recursive: bool) -> list[dict]:
    """Tree entries under `prefix` (direct children, or all descendants when `recursive`)."""
    prefix = prefix.strip("/")
    base = f"{prefix}/" if prefix else ""
    entries: dict[str, dict] = {}
    for path, stored in sorted(commit.files.items()):
        if not path.startswith(base):
            continue
        parts = path[len(base) :].split("/")
        for depth in range(1, len(parts)):
            directory = base + "/".join(parts[:depth])
            if recursive or depth == 1:
                entries.setdefault(directory, {"type": "directory", "oid": hashlib.sha1(directory.encode()).hexdigest(),
                                               "size": 0, "path": directory})  # fmt: skip
            if not recursive:
                break
        if recursive or len(parts) == 1:
            entry = {"type": "file", "oid": stored.git_oid, "size": len(stored.data), "path": path}
            if stored.lfs:
                entry["lfs"] = {"oid": stored.sha256, "size": len(stored.data), "pointerSize": 134}
            entries[path] = entry
    return list(entries.values())
