"""A Hugging Face Hub-compatible HTTP server for tests, standard library only (the endpoints the real clients call are
listed below).

It carries the real clients (`huggingface_hub`, `datasets`, `diffusers`) through what this package uses:
`whoami-v2`, `repos/create` / `repos/delete`, `preupload` (parquet/safetensors/bin/images, binary and large files
answered as LFS, with the `oid` of a file already there), the LFS batch API and object PUTs, NDJSON `commit` (applied
whole or not at all), repo info (`revision/{rev}`), `tree`, `paths-info`, `refs`, `commits`, `resolve` (HEAD/GET, byte
ranges) and `validate-yaml`. Everything lives in memory (`hub_repos.py`).

It is as strict as the Hub where this package could get it wrong:

- **tokens**: `tokens` maps each token to its user; writes (create, preupload, LFS batch, commit, delete) without a
  known Bearer token answer 401, writes to a repo outside the user's namespace 403; a missing or private repo is
  401 (anonymous) or 404 (another user) to reads; a gated repo ([`add_repo`]) shows its info, card and tree, but
  its files answer `GatedRepo` 401 (anonymous) or 403 (another user); an unknown revision is 404
  `RevisionNotFound`;
- **card metadata**: `validate-yaml` and every commit of a `README.md` check its YAML with the Hub's rules
  (`hub_card_rules.py`: licence ids, task ids, size categories, lists of strings, `dataset_info` / `configs`
  shapes) and answer 400 with the Hub's messages;
- **LFS storage is per repo**: an object uploaded to repo A is not available to a commit of repo B (422);
- **binary files go through LFS**: a regular (inline) file whose content is binary, e.g. a `.png`, is refused
  (400), as the Hub does; `preupload` answers LFS for them;
- **deletions**: a commit deleting a file that is not there answers 404 `EntryNotFound`;
- **parent commits**: a commit whose `parentCommit` is not the head answers 412, as the Hub does;
- **faults**: `fail(endpoint, times, status, retry_after)` makes the next calls of an endpoint answer `status`
  (500, 429 with `Retry-After`, 403, ...); `hold(endpoint, after)` blocks one call until `release()` (a client
  can be killed mid-upload there); the held call then fails without effect; `drop(endpoint, times)` applies the
  next calls and closes their connection before answering (a commit the Hub applied whose response was lost).

Clients need `HF_ENDPOINT=server.url`, `HF_HUB_DISABLE_XET=1` and a token of `tokens` (see [`client_env`]), set
before they import the HF libraries.

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
import shutil
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit
from urllib.request import Request, urlopen

from hub_card_rules import card_errors
from hub_repos import Commit, Repo, StoredFile, is_binary, tree, upload_mode

REPO_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
TOKENS = {"hf_test_token": "tester", "hf_other_token": "someone-else"}
"""Default `HubServer.tokens`: [`client_env`] gives clients `hf_test_token`, user `tester`."""
HOLD_TIMEOUT = 120.0
"""Seconds a held call waits for [`HubServer.release`]."""
BAD_TOKEN = "Invalid credentials in Authorization header"
_API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/(.*))?$")
_LFS_BATCH = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_LFS_PUT = re.compile(r"^/_lfs/(model|dataset|space)/([^/]+/[^/]+)/([0-9a-f]{64})$")
_RESOLVE = re.compile(r"^/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_TYPE_OF_PREFIX = {None: "model", "datasets/": "dataset", "spaces/": "space"}


class Call(NamedTuple):
    """One answered request: `time` is `time.monotonic()` when the answer was sent."""

    method: str
    path: str
    status: int
    time: float


class HubServer:
    """In-memory Hub on `127.0.0.1`; `url` is the value for `HF_ENDPOINT`; `tokens` maps tokens to user names."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, tokens: dict[str, str] | None = None, hf_home: str | None = None
    ):
        self.tokens = dict(TOKENS if tokens is None else tokens)
        self.hf_home = hf_home
        """The clients' `HF_HOME` ([`client_env`]'s default), emptied by [`reset`]."""
        self.repos: dict[tuple[str, str], Repo] = {}
        self.faults: dict[str, list[tuple[int, int | None]]] = {}
        self.holds: dict[str, int] = {}
        self.drops: dict[str, int] = {}
        self.held = threading.Event()
        """Set while a call of [`hold`] waits."""
        self.released = threading.Event()
        self.requests: list[Call] = []
        self.lock = threading.RLock()
        self.httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        """Back to a new server's state, on the same port: no repo, recorded call, fault, hold or drop, any held
        call released, and the clients' `HF_HOME` emptied."""
        self.release()
        with self.lock:
            for state in (self.repos, self.faults, self.holds, self.drops, self.requests):
                state.clear()
            self.held.clear()
            self.released.clear()
        if self.hf_home:
            shutil.rmtree(self.hf_home, ignore_errors=True)

    def fail(self, endpoint: str, times: int = 1, status: int = 500, retry_after: int | None = None) -> None:
        """The next `times` calls of `endpoint` (`whoami`, `create`, `delete`, `validate-yaml`, `info`, `preupload`,
        `commit`, `tree`, `paths-info`, `refs`, `commits`, `lfs-batch`, `lfs-upload`, `resolve`) answer `status`,
        with a `Retry-After: retry_after` header when given (as the Hub's 429), after the faults already armed;
        `times=0` disarms them all."""
        with self.lock:
            pending = self.faults.setdefault(endpoint, []) if times else self.faults.pop(endpoint, [])
            pending.extend([(status, retry_after)] * times)

    def drop(self, endpoint: str, times: int = 1) -> None:
        """The next `times` calls of `endpoint` take effect, then their connection closes without an answer (the
        client sees a dropped connection); their recorded status is 0."""
        with self.lock:
            self.drops[endpoint] = self.drops.get(endpoint, 0) + times

    def hold(self, endpoint: str, after: int = 0) -> None:
        """The call of `endpoint` after the next `after` ones waits (setting `held`) until [`release`], then answers
        503 without effect: the moment to kill a client mid-upload."""
        with self.lock:
            self.holds[endpoint] = after
            self.held.clear()
            self.released.clear()

    def release(self) -> None:
        self.released.set()

    def add_repo(
        self, repo_type: str, repo_id: str, files: dict[str, bytes], private: bool = False, gated: bool = False
    ) -> Repo:
        """Creates a repo holding `files` (`{path: content}`, stored in LFS as `preupload` would answer) in one
        commit after the initial one."""
        stored = {path: StoredFile(data, upload_mode(path, len(data), data[:512]) == "lfs")
                  for path, data in files.items()}  # fmt: skip
        initial = _initial_commit()
        added = Commit(_new_oid(), "add files", {**initial.files, **stored})
        with self.lock:
            repo = Repo(repo_type, repo_id, private, [initial, added], gated=gated)
            self.repos[(repo_type, repo_id)] = repo
        return repo

    def repo(self, repo_type: str, repo_id: str) -> Repo | None:
        with self.lock:
            return self.repos.get((repo_type, repo_id))

    def files(self, repo_type: str, repo_id: str) -> dict[str, bytes]:
        """`{path: content}` at the head of a repo (empty if it does not exist)."""
        repo = self.repo(repo_type, repo_id)
        return {path: f.data for path, f in repo.commits[-1].files.items()} if repo else {}

    def num_commits(self, repo_type: str, repo_id: str) -> int:
        repo = self.repo(repo_type, repo_id)
        return len(repo.commits) if repo else 0

    def calls(self, method: str, fragment: str) -> list[Call]:
        """The answered requests of `method` whose path contains `fragment`, in order."""
        with self.lock:
            return [r for r in self.requests if r.method == method and fragment in r.path]


def client_env(
    server: HubServer, hf_home: str | None = None, threads: int = 1, token: str | None = "hf_test_token"
) -> dict[str, str]:
    """Environment of a client subprocess of `server`: this process's, online, with the variables the clients need
    (read by the HF libraries at import time), the `HF_HOME` cache `hf_home` (default: the server's) and
    `HF_TOKEN=token` (none if `None`). Clients with the same environment share one pre-imported `fork_server`."""
    dropped = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN", "HF_MODULES_CACHE")  # modules: under `hf_home`
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HOME=hf_home or server.hf_home, HF_HUB_DISABLE_PROGRESS_BARS="1",
               OMP_NUM_THREADS=str(threads), **({"HF_TOKEN": token} if token else {}))  # fmt: skip
    return env


def arm_fault(
    endpoint: str, times: int, status: int = 500, retry_after: int | None = None, drop: bool = False
) -> None:
    """From a client: makes the next `times` calls of `endpoint` fail (see [`HubServer.fail`]; 0 disarms), or with
    `drop` take effect and lose their answer ([`HubServer.drop`])."""
    payload = {"endpoint": endpoint, "times": times, "status": status, "retry_after": retry_after, "drop": drop}
    request = Request(f"{os.environ['HF_ENDPOINT']}/_test/fail", method="POST", data=json.dumps(payload).encode(),
                      headers={"Content-Type": "application/json"})  # fmt: skip
    urlopen(request).read()


def _initial_commit() -> Commit:
    attributes = StoredFile(b"*.parquet filter=lfs diff=lfs merge=lfs -text\n", False)
    return Commit(_new_oid(), "initial commit", {".gitattributes": attributes})


def _new_oid() -> str:
    return hashlib.sha1(uuid.uuid4().bytes).hexdigest()


def _make_handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        hub = server

    return Handler


class _HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


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
        self.drop_answer = False
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        status = 500
        try:
            try:
                status = self._route(method, unquote(url.path) if method != "PUT" else url.path)
            except _HTTPError as error:
                status = error.status
                headers = {"X-Error-Code": error.code, "X-Error-Message": error.message, **error.headers}
                self._json(error.status, {"error": error.message}, headers)
            except Exception as error:  # report, never hang the client
                self._json(500, {"error": repr(error)})
        except (BrokenPipeError, ConnectionResetError):  # the client is gone (killed during a held call)
            self.close_connection = True
        with self.hub.lock:
            self.hub.requests.append(Call(method, self.path, status, time.monotonic()))

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> int:
        if self.drop_answer:  # the call took effect; its answer is lost
            self.close_connection = True
            return 0
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

    def _gate(self, endpoint: str) -> None:
        """Injected faults and holds of `endpoint` (see [`HubServer.fail`], [`HubServer.hold`]); never under the
        lock, so that a held call does not stop the others."""
        with self.hub.lock:
            pending = self.hub.faults.get(endpoint)
            fault = pending.pop(0) if pending else None
            after = self.hub.holds.get(endpoint)
            if self.hub.drops.get(endpoint):
                self.hub.drops[endpoint] -= 1
                self.drop_answer = True
            if after is not None:
                if after > 0:
                    self.hub.holds[endpoint] = after - 1
                else:
                    del self.hub.holds[endpoint]
        if fault is not None:
            status, retry_after = fault
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            raise _HTTPError(status, "InjectedFault", f"injected failure of {endpoint} (HTTP {status})", headers)
        if after == 0:
            self.hub.held.set()
            self.hub.released.wait(HOLD_TIMEOUT)
            raise _HTTPError(503, "ServiceUnavailable", f"held call of {endpoint} released without effect")

    # -- tokens and access ---------------------------------------------------------------------------------

    def _user(self) -> str | None:
        """The token's user; `None` without a token; 401 for a token the server does not know."""
        header = self.headers.get("Authorization")
        if not header:
            return None
        user = self.hub.tokens.get(header.removeprefix("Bearer ").strip())
        if user is None:
            raise _HTTPError(401, "Unauthorized", BAD_TOKEN)
        return user

    def _writer(self, namespace: str, what: str) -> str:
        """The token's user, who must own `namespace` (401 without a token, 403 for another namespace)."""
        user = self._user()
        if user is None:
            raise _HTTPError(401, "Unauthorized", f"You must be authenticated to {what}: pass a token.")
        if user != namespace:
            raise _HTTPError(403, "Forbidden", f"You don't have the rights to {what}: {namespace!r} is not "
                                               f"your namespace (the token is {user!r}'s).")  # fmt: skip
        return user

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        """The repo if the caller may read it: 404 if it does not exist, and for a private repo of another user
        401 (anonymous) or 404, as on the Hub."""
        user = self._user()
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user != repo.namespace):
            status = 401 if user is None else 404
            raise _HTTPError(status, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def _check_gate(self, repo: Repo, path: str) -> None:
        """A gated repo's files (but its card and `.gitattributes`) are its owner's only, as on the Hub."""
        user = self._user()
        if repo.gated and user != repo.namespace and path not in ("README.md", ".gitattributes"):
            if user is None:
                raise _HTTPError(401, "GatedRepo", f"Access to {repo.repo_type} {repo.repo_id} is restricted. You must "
                                 "have access to it and be authenticated to access it. Please log in.")  # fmt: skip
            raise _HTTPError(403, "GatedRepo", f"Access to {repo.repo_type} {repo.repo_id} is restricted and you are "
                             "not in the authorized list.")  # fmt: skip

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.find(revision)
        if commit is None:
            raise _HTTPError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # -- routes --------------------------------------------------------------------------------------------

    def _route(self, method: str, path: str) -> int:
        if path == "/_test/fail" and method == "POST":  # lets a client process arm a fault
            payload = self._payload()
            if payload.get("drop"):
                self.hub.drop(payload["endpoint"], int(payload.get("times", 1)))
            else:
                self.hub.fail(payload["endpoint"], int(payload.get("times", 1)), int(payload.get("status", 500)),
                              payload.get("retry_after"))  # fmt: skip
            return self._json(200, {})
        if path == "/api/whoami-v2":
            self._gate("whoami")
            user = self._user()
            if user is None:
                raise _HTTPError(401, "Unauthorized", BAD_TOKEN)
            return self._json(200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})  # fmt: skip
        if path == "/api/repos/create" and method == "POST":
            self._gate("create")
            return self._create_repo()
        if path == "/api/repos/delete" and method == "DELETE":
            self._gate("delete")
            return self._delete_repo()
        if path == "/api/validate-yaml" and method == "POST":
            self._gate("validate-yaml")
            payload = self._payload()
            errors = card_errors(payload.get("content", ""), payload.get("repoType") or "model")
            return self._json(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})
        if match := _LFS_PUT.match(path):
            self._gate("lfs-upload")
            return self._lfs_put(*match.groups())
        if match := _LFS_BATCH.match(path):
            self._gate("lfs-batch")
            return self._lfs_batch(_TYPE_OF_PREFIX[match.group(1)], match.group(2))
        if match := _RESOLVE.match(path):
            self._gate("resolve")
            return self._resolve(_TYPE_OF_PREFIX[match.group(1)], *match.groups()[1:])
        if match := _API.match(path):
            rest = match.group(3) or ""
            action = "info" if rest == "" or rest.startswith("revision/") else rest.partition("/")[0]
            self._gate(action)
            return self._api(method, match.group(1)[:-1], match.group(2), action, rest)
        raise _HTTPError(404, "NotFound", f"no route for {method} {path}")

    def _create_repo(self) -> int:
        payload = self._payload()
        repo_type = payload.get("type") or "model"
        user = self._user()
        namespace = payload.get("organization") or user
        self._writer(namespace or "", f"create a {repo_type} under the namespace {namespace!r}")
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.hub.url}/{REPO_PREFIX[repo_type]}{repo_id}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                return self._json(409, {"error": "You already created this repo", "url": url})
            initial = _initial_commit()
            private = bool(payload.get("private")) or payload.get("visibility") == "private"
            self.hub.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private, [initial])
        return self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> int:
        payload = self._payload()
        repo_type = payload.get("type") or "model"
        self._writer(payload["organization"], f"delete {payload['organization']}/{payload['name']}")
        with self.hub.lock:
            self.hub.repos.pop((repo_type, f"{payload['organization']}/{payload['name']}"), None)
        return self._json(200, {})

    def _api(self, method: str, repo_type: str, repo_id: str, action: str, rest: str) -> int:
        with self.hub.lock:
            repo = self._repo(repo_type, repo_id)
            tail = rest.partition("/")[2]
            if action == "info":
                return self._info(repo, rest[len("revision/") :] or "main")
            if action == "preupload" and method == "POST":
                self._writer(repo.namespace, f"upload to {repo_id}")
                return self._preupload(repo, tail)
            if action == "commit" and method == "POST":
                self._writer(repo.namespace, f"commit to {repo_id}")
                return self._commit(repo, tail)
            if action == "tree":
                revision, _, prefix = tail.partition("/")
                recursive = self.query.get("recursive", [""])[0] in ("1", "true", "True")
                return self._json(200, tree(self._commit_of(repo, revision), prefix, recursive))
            if action == "paths-info":
                commit = self._commit_of(repo, tail)
                wanted = self._payload().get("paths", [])
                wanted = [wanted] if isinstance(wanted, str) else wanted
                return self._json(200, [e for e in tree(commit, "", recursive=True) if e["path"] in wanted])
            if action == "refs":
                return self._json(200, {"branches": [{"name": "main", "ref": "refs/heads/main",
                                                      "targetCommit": repo.commits[-1].oid}], "tags": [], "converts": []})  # fmt: skip
            if action == "commits":
                commits = reversed(repo.commits[: repo.commits.index(self._commit_of(repo, tail)) + 1])
                return self._json(200, [{"id": c.oid, "title": c.title, "message": c.title, "date": c.date,
                                         "authors": [{"user": repo.namespace}]} for c in commits])  # fmt: skip
        raise _HTTPError(404, "NotFound", f"no route for {method} /api/{repo_type}s/{repo_id}/{rest}")

    def _info(self, repo: Repo, revision: str) -> int:
        commit = self._commit_of(repo, revision)
        siblings = [{"rfilename": path, "size": len(f.data), "blobId": f.git_oid,
                     **({"lfs": {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}} if f.lfs else {})}
                    for path, f in sorted(commit.files.items())]  # fmt: skip
        return self._json(200, {
            "_id": repo.repo_id, "id": repo.repo_id, "author": repo.namespace, "sha": commit.oid,
            "lastModified": commit.date, "createdAt": repo.commits[0].date, "private": repo.private,
            "disabled": False, "gated": "manual" if repo.gated else False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings,
        })  # fmt: skip

    def _preupload(self, repo: Repo, revision: str) -> int:
        head = self._commit_of(repo, revision).files
        answers = []
        for f in self._payload()["files"]:
            mode = upload_mode(f["path"], f["size"], base64.b64decode(f.get("sample", "")))
            answer = {"path": f["path"], "uploadMode": mode, "shouldIgnore": False}
            if f["path"] in head:
                answer["oid"] = head[f["path"]].oid
            answers.append(answer)
        return self._json(200, {"files": answers})

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
                parent = value.get("parentCommit")
                if parent and not repo.commits[-1].oid.startswith(parent):
                    raise _HTTPError(412, "PreconditionFailed", "A commit has happened since. Please refresh and try again.")  # fmt: skip
            elif key == "file":
                content = base64.b64decode(value["content"])
                if is_binary(content):
                    raise _HTTPError(400, "BadRequest", "Your push was rejected because it contains binary "
                                     f"files. Please use LFS to store them. Offending files: {value['path']}")  # fmt: skip
                files[value["path"]] = StoredFile(content, False)
            elif key == "lfsFile":
                data = repo.lfs_objects.get(value["oid"])
                if data is None:
                    raise _HTTPError(422, "LfsObjectMissing", f"Your push was rejected because an LFS pointer "
                                     f"pointed to a file that does not exist in {repo.repo_id}: {value['oid']}")  # fmt: skip
                files[value["path"]] = StoredFile(data, True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise _HTTPError(404, "EntryNotFound", f"Cannot delete {value['path']}: it does not exist on main")
            elif key == "deletedFolder":
                files = {p: f for p, f in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise _HTTPError(400, "BadRequest", f"unknown commit operation {key}")
        if "README.md" in files and files["README.md"] is not repo.commits[-1].files.get("README.md"):
            errors = card_errors(files["README.md"].data.decode("utf-8", "replace"), repo.repo_type)
            if errors:
                raise _HTTPError(400, "BadRequest", "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors))  # fmt: skip
        commit = Commit(_new_oid(), title, files)
        repo.commits.append(commit)  # the whole commit, or (on any error above) nothing
        prefix = REPO_PREFIX[repo.repo_type]
        return self._json(200, {"commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{commit.oid}",
                                "commitOid": commit.oid, "pullRequestUrl": None})  # fmt: skip

    def _lfs_batch(self, repo_type: str, repo_id: str) -> int:
        payload = self._payload()
        with self.hub.lock:
            repo = self._repo(repo_type, repo_id)
            if payload.get("operation", "upload") == "upload":
                self._writer(repo.namespace, f"upload to {repo_id}")
            objects = []
            for obj in payload.get("objects", []):
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in repo.lfs_objects:
                    href = f"{self.hub.url}/_lfs/{repo_type}/{repo_id}/{obj['oid']}"
                    entry["actions"] = {"upload": {"href": href, "expires_in": 3600}}
                objects.append(entry)
        return self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, repo_type: str, repo_id: str, oid: str) -> int:
        """The upload URL the LFS batch answered (a pre-signed URL on the Hub: no token needed)."""
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise _HTTPError(400, "BadRequest", "sha256 of the body does not match the object id")
        with self.hub.lock:
            self.hub.repos[(repo_type, repo_id)].lfs_objects[oid] = self.body
        return self._send(200, b"")

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> int:
        with self.hub.lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit_of(repo, revision)
            stored = commit.files.get(path)
            self._check_gate(repo, path)
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
