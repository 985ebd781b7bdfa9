#!/usr/bin/env python3
"""Back up the team stack into one archive, check an archive, restore one onto an empty stack.

    docker/stack_archive.py backup [--to DIR]   # make backup: DIR/dae-backup-<UTC time>.tar (default backups/)
    docker/stack_archive.py check ARCHIVE       # every part against the manifest; touches no stack
    docker/stack_archive.py restore ARCHIVE     # make restore ARCHIVE=...: onto an empty stack, then checked

Run on the host, in the clone whose docker-compose.yml and .env started the stack; it needs
only Python 3.9+ and the stack's compose. Everything it reads from or writes to the stack
goes through compose: pg_dump / pg_restore in the postgres container (`exec`), the artifact
bucket through a container of the MLflow server's image and environment (`run`: boto3 and the
S3 keys are there; its server need not run). The archive (a plain tar, mode 0600: it holds the MLflow users' password
hashes and Prefect's secret blocks with their key) is

    manifest.json          what, when, which release, and for each part its bytes and sha256;
                           for each table the rows its dump holds; the bucket's objects
    databases/<part>.dump  pg_dump's custom format of the Prefect, MLflow, MLflow-login and
                           Optuna databases, each a consistent copy of its live database
    artifacts.tar          every object of the artifact bucket, copied after the databases,
                           so every artifact a dumped record names is in it

Not in it: .env (keep it with the archives, apart: the restored MLflow login takes its
admin's password), MNIST (`DATA_DIR=DIR make restore ...` copies it in as team-setup.sh
does; without it the worker downloads it) and the workers' scratch volume (resume points
of runs in progress, caches). docs/deployment.md, "Backing up and restoring", says how a
team uses it and what it costs.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

FORMAT = "dae-stack-backup/1"
MANIFEST = "manifest.json"
ARTIFACTS = "artifacts.tar"
# The stack's databases by part: .env setting and default name (as docker-compose.yml).
DATABASES = {"prefect": ("PREFECT_DB", "prefect"), "mlflow": ("MLFLOW_DB", "mlflow"),
             "mlflow_auth": ("MLFLOW_AUTH_DB", "mlflow_auth"), "tuning": ("TUNING_DB", "optuna")}
# Services that write to the databases: stopped while a restore loads them.
WRITERS = ("worker", "model-server", "mlflow-users", "mlflow", "prefect-server")
# The tags of an MLflow run ended without its process (adapters/tags.py: FAILURE, FAILURE_DETAIL).
FAILURE_TAG, FAILURE_DETAIL_TAG = "dae.failure", "dae.failure_detail"
IN_PROGRESS_AT_BACKUP = "in progress at backup"
CHUNK = 1 << 20

# Run by the MLflow server's Python (boto3 and the S3 keys are there): the bucket as a tar
# stream on stdout ("dump"), a tar stream on stdin into the bucket ("load"), or the bucket's
# keys and sizes as JSON ("list").
BUCKET_SCRIPT = r"""
import json, os, shutil, sys, tarfile, tempfile, boto3
mode, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
def objects():
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            yield from page.get("Contents", [])
    except s3.exceptions.NoSuchBucket:
        return
if mode == "list":
    json.dump({o["Key"]: o["Size"] for o in objects()}, sys.stdout)
elif mode == "dump":
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for listed in objects():
            body = s3.get_object(Bucket=bucket, Key=listed["Key"])
            member = tarfile.TarInfo(listed["Key"])
            member.size, member.mtime = body["ContentLength"], listed["LastModified"].timestamp()
            archive.addfile(member, body["Body"])
elif mode == "load":
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception:
        s3.create_bucket(Bucket=bucket)
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as archive:
        for member in archive:  # a stream's member cannot seek, which uploads want: spooled first
            with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spooled:
                shutil.copyfileobj(archive.extractfile(member), spooled)
                spooled.seek(0)
                s3.upload_fileobj(spooled, bucket, member.name)
"""


class Refused(Exception):
    """What stops the command: one line of cause, one of fix, an exit code (sysexits)."""

    def __init__(self, cause: str, fix: str, exit_code: int = 69) -> None:
        super().__init__(cause)
        self.cause, self.fix, self.exit_code = cause, fix, exit_code


class ArchiveDamaged(Refused):
    def __init__(self, archive: Path, what: str) -> None:
        super().__init__(f"{archive}: not a complete dae stack backup ({what}); nothing was changed",
                         "restore another archive (`docker/stack_archive.py check` tells a sound one)", 65)


# --- the archive ------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def rows_by_table(lines) -> dict[str, int]:
    """The rows of each table in pg_restore's plain SQL of a dump, given as lines of bytes
    (a binary pipe's lines end at b"\\n" alone; str.splitlines would also end them at
    characters a value holds): COPY's data lines, one row a line (COPY's text format escapes
    newlines), between ``COPY name (...) FROM stdin;`` and ``\\.``."""
    rows: dict[str, int] = {}
    table = None
    for line in lines:
        line = line.rstrip(b"\n")
        if table is None:
            if line.startswith(b"COPY ") and line.endswith(b"FROM stdin;"):
                table = line[5:].split(b" (", 1)[0].split(b" FROM", 1)[0].decode()
                rows[table] = 0
        elif line == b"\\.":
            table = None
        else:
            rows[table] += 1
    return rows


def write_archive(destination: Path, manifest: dict, parts: dict[str, Path]) -> None:
    """The archive at ``destination``, whole or not at all: written beside it, flushed to disk,
    then renamed; the manifest first, then the parts in the manifest's order."""
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        with open(partial, "wb") as handle:
            os.chmod(partial, 0o600)
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as archive:
                encoded = json.dumps(manifest, indent=2, sort_keys=True).encode()
                member = tarfile.TarInfo(MANIFEST)
                member.size, member.mtime, member.mode = len(encoded), time.time(), 0o600
                archive.addfile(member, io.BytesIO(encoded))
                for name, path in parts.items():
                    archive.add(path, arcname=name, recursive=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)


def listed_parts(manifest: dict) -> dict[str, dict]:
    """The manifest's parts by their name in the archive: each with its bytes and sha256."""
    parts = {entry["file"]: entry for entry in manifest["databases"].values()}
    parts[manifest["artifacts"]["file"]] = manifest["artifacts"]
    return parts


def check_archive(archive: Path, into: Path | None = None) -> dict:
    """The archive's manifest once every part it lists is there, whole, with its bytes and
    sha256, and nothing else is; with ``into``, the parts are also written there. Anything
    else (truncated, altered, not a backup) raises ArchiveDamaged."""
    try:
        with tarfile.open(archive, mode="r:") as opened:
            first = opened.next()
            if first is None or first.name != MANIFEST or not first.isfile() or first.size > CHUNK:
                raise ArchiveDamaged(archive, "its first member is not the manifest")
            manifest = json.loads(opened.extractfile(first).read())
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ArchiveDamaged(archive, f"the manifest is not of format {FORMAT}")
            expected = listed_parts(manifest)
            seen = set()
            while (member := opened.next()) is not None:  # on from the manifest (iterating starts over)
                entry = expected.get(member.name)
                if entry is None or member.name in seen or not member.isfile():
                    raise ArchiveDamaged(archive, f"an unexpected member {member.name!r}")
                seen.add(member.name)
                digest, size = hashlib.sha256(), 0
                source = opened.extractfile(member)
                target = None
                if into is not None:
                    (into / member.name).parent.mkdir(parents=True, exist_ok=True)
                    target = open(into / member.name, "wb")
                try:
                    while block := source.read(CHUNK):
                        digest.update(block)
                        size += len(block)
                        if target is not None:
                            target.write(block)
                finally:
                    if target is not None:
                        target.close()
                if size != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
                    raise ArchiveDamaged(archive, f"{member.name} is not what the manifest says "
                                                  f"({size} bytes, the manifest {entry['bytes']})")
            missing = sorted(set(expected) - seen)
            if missing:
                raise ArchiveDamaged(archive, f"{', '.join(missing)} missing")
    except ArchiveDamaged:
        raise
    except FileNotFoundError:
        raise Refused(f"{archive}: no such file", "give the path of a backup (make backup writes them to backups/)",
                      66) from None
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ArchiveDamaged(archive, f"{type(error).__name__}: {error}".splitlines()[0][:200]) from None
    return manifest


# --- the stack --------------------------------------------------------------------------

def env_file_settings(path: Path) -> dict[str, str]:
    """.env's settings, the last of a name winning (as compose reads it)."""
    settings = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            settings[name.strip()] = value.strip().strip("'\"")
    return settings


@dataclass
class Stack:
    """The team stack of the clone at ``root``, through its compose."""

    root: Path
    settings: dict[str, str]
    compose: list[str]

    @classmethod
    def of(cls, root: Path) -> Stack:
        env = root / ".env"
        if not env.is_file():
            raise Refused(f"no .env in {root}", "run this from the clone whose .env started the stack", 2)
        if shutil.which("docker") is None:
            raise Refused("docker is not installed here (or not on PATH)", "run this on the stack's host", 69)
        compose = ["docker", "compose"]  # v2 where installed, else v1 (as docker/team-setup.sh)
        if subprocess.run([*compose, "version"], capture_output=True).returncode != 0:
            compose = ["docker-compose"]
        if shutil.which(compose[0]) is None:
            raise Refused("neither `docker compose` nor `docker-compose` is installed", "install Docker Compose", 69)
        # As compose: the process environment wins over .env.
        return cls(root, {**env_file_settings(env), **os.environ}, compose)

    def setting(self, name: str, default: str = "") -> str:
        return self.settings.get(name) or default

    def database(self, part: str) -> str:
        return self.setting(*DATABASES[part])

    def run(self, *args: str, stdin=None, stdout=None, timeout: float = 3600) -> str:
        done = subprocess.run([*self.compose, *args], cwd=self.root, stdin=stdin,
                              stdout=stdout if stdout is not None else subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout)
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()
            raise Refused(f"`{' '.join(args[:4])}` failed: {said[-1] if said else f'exit {done.returncode}'}",
                          "see `docker compose logs`; the stack must be running (docker/team-setup.sh)", 70)
        return "" if stdout is not None else done.stdout.decode()

    def rows_in_dump(self, dump: Path) -> dict[str, int]:
        """Each table's rows in a pg_dump file, read from pg_restore's SQL of it as it streams."""
        with open(dump, "rb") as source:
            reader = subprocess.Popen([*self.compose, "exec", "-T", "postgres", "pg_restore", "--data-only", "-f", "-"],
                                      cwd=self.root, stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            rows = rows_by_table(reader.stdout)
            error = reader.stderr.read().decode(errors="replace").strip()
            if reader.wait() != 0:
                raise Refused(f"pg_restore could not read back the dump it was given ({error.splitlines()[-1:]})",
                              "see `docker compose logs postgres`", 70)
        return rows

    def psql(self, database: str, sql: str) -> str:
        return self.run("exec", "-T", "postgres", "psql", "-U", self.setting("POSTGRES_USER"), "-d", database,
                        "-v", "ON_ERROR_STOP=1", "-At", "-c", sql)

    def bucket(self, mode: str, stdin=None, stdout=None) -> str:
        """BUCKET_SCRIPT in a container of the MLflow server's image and environment, not its
        server (which must not start on the databases before they are restored)."""
        return self.run("run", "--rm", "--no-deps", "-T", "--entrypoint", "python", "mlflow", "-c", BUCKET_SCRIPT,
                        mode, self.setting("S3_BUCKET", "mlflow-artifacts"), stdin=stdin, stdout=stdout)

    def require_running(self, *services: str) -> None:
        running = set(self.run("ps", "--services", "--filter", "status=running").split())
        missing = [service for service in services if service not in running]
        if missing:
            raise Refused(f"the stack's {', '.join(missing)} is not running",
                          "start the stack (docker/team-setup.sh), then try again", 69)

    def wait_healthy(self, *services: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for service in services:
            while True:
                container = self.run("ps", "-q", service).strip()
                state = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", container],
                                       capture_output=True, text=True).stdout.strip() if container else ""
                if state == "healthy":
                    break
                if time.monotonic() > deadline:
                    raise Refused(f"{service} is not healthy after {timeout:.0f} s ({state or 'not started'})",
                                  f"see `docker compose logs {service}`", 70)
                time.sleep(2)

    def url(self, port_setting: str, default_port: str) -> str:
        bind = self.setting("BIND_ADDRESS", "127.0.0.1")
        host = "127.0.0.1" if bind in ("0.0.0.0", "::") or bind.startswith("127.") else bind
        return f"http://{host}:{self.setting(port_setting, default_port)}"


def _release(root: Path) -> str:
    found = re.search(r'^version\s*=\s*"([^"]+)"', (root / "pyproject.toml").read_text(), re.MULTILINE)
    return found.group(1) if found else "unknown"


def _commit(root: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: UP017 (Python 3.9 on the host)


# --- backup -----------------------------------------------------------------------------

def say(message: str) -> None:
    """A step of a command that takes minutes, with the time it starts."""
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def backup(stack: Stack, folder: Path, say=say) -> Path:
    """One archive of the running stack in ``folder``; returns its path."""
    stack.require_running("postgres", "s3")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder)
        probe.close()
    except OSError as error:
        raise Refused(f"cannot write in {folder}: {error.strerror}", "give a folder you can write (--to DIR)",
                      73) from None
    started, created = time.monotonic(), _now()
    destination = folder / f"dae-backup-{created.replace(':', '').replace('-', '')}.tar"
    manifest = {"format": FORMAT, "created": created, "release": _release(stack.root),
                "commit": _commit(stack.root), "databases": {}}
    with tempfile.TemporaryDirectory(dir=folder, prefix=".dae-backup-") as work:
        parts = {}
        for part in DATABASES:  # the databases first: every artifact their records name is then in the bucket
            say(f"backup: dumping database {stack.database(part)}")
            parts[f"databases/{part}.dump"] = Path(work) / f"{part}.dump"
            manifest["databases"][part] = _dump_database(stack, part, parts[f"databases/{part}.dump"])
        say("backup: copying the artifact bucket")
        parts[ARTIFACTS] = Path(work) / ARTIFACTS
        manifest["artifacts"] = _dump_bucket(stack, parts[ARTIFACTS])
        manifest["seconds"] = round(time.monotonic() - started, 1)
        write_archive(destination, manifest, parts)
    check_archive(destination)
    rows = ", ".join(f"{part} {sum(entry['tables'].values())} rows" for part, entry in manifest["databases"].items())
    say(f"backup: {destination} ({destination.stat().st_size / 1e6:.1f} MB, {manifest['seconds']:.0f} s): "
        f"{rows}, {manifest['artifacts']['objects']} artifacts")
    return destination


def _dump_database(stack: Stack, part: str, path: Path) -> dict:
    """pg_dump's custom format of one database at ``path``; its manifest entry."""
    database = stack.database(part)
    with open(path, "wb") as handle:
        stack.run("exec", "-T", "postgres", "pg_dump", "-U", stack.setting("POSTGRES_USER"), "-Fc", "-d", database,
                  stdout=handle)
    return {"database": database, "file": f"databases/{part}.dump", "bytes": path.stat().st_size,
            "sha256": sha256_of(path), "tables": stack.rows_in_dump(path)}


def _dump_bucket(stack: Stack, path: Path) -> dict:
    """Every object of the artifact bucket in a tar at ``path``; its manifest entry."""
    with open(path, "wb") as handle:
        stack.bucket("dump", stdout=handle)
    with tarfile.open(path, "r:") as copied:
        objects = {member.name: member.size for member in copied}
    return {"file": ARTIFACTS, "bytes": path.stat().st_size, "sha256": sha256_of(path),
            "bucket": stack.setting("S3_BUCKET", "mlflow-artifacts"), "objects": len(objects),
            "object_bytes": sum(objects.values())}


# --- restore ----------------------------------------------------------------------------

def _tables(stack: Stack, database: str) -> int:
    return int(stack.psql(database, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") or 0)


def _rows(stack: Stack, database: str, tables: list[str]) -> dict[str, int]:
    if not tables:
        return {}
    query = " UNION ALL ".join(f"SELECT '{table.replace(chr(39), chr(39) * 2)}', count(*) FROM {table}"
                               for table in tables)
    return {line.rsplit("|", 1)[0]: int(line.rsplit("|", 1)[1])
            for line in stack.psql(database, query).splitlines() if line}


def _request(url: str, headers: dict[str, str], body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read() or b"{}")


def end_runs_in_progress(stack: Stack, note: str) -> tuple[int, int]:
    """Every flow run and MLflow run that the restored databases hold as in progress was in
    progress when the backup was made, and nothing carries it on here: the flow runs end
    Crashed, the MLflow runs FAILED with ``note``. Returns how many of each."""
    prefect = stack.url("PREFECT_PORT", "4200") + "/api"
    auth = base64.b64encode(stack.setting("PREFECT_API_AUTH_STRING").encode()).decode()
    prefect_headers = {"Authorization": f"Basic {auth}"}
    in_progress = {"flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING", "CANCELLING"]}}}, "limit": 200}
    ended: set[str] = set()
    while found := _request(f"{prefect}/flow_runs/filter", prefect_headers, in_progress):
        for flow_run in found:
            _once(ended, flow_run["id"], "flow run")
            _request(f"{prefect}/flow_runs/{flow_run['id']}/set_state", prefect_headers,
                     {"state": {"type": "CRASHED", "name": "Crashed", "message": note}, "force": True})
    flow_runs = len(ended)
    mlflow = stack.url("MLFLOW_PORT", "5000") + "/api/2.0/mlflow"
    login = f"{stack.setting('MLFLOW_ADMIN_USERNAME', 'admin')}:{stack.setting('MLFLOW_ADMIN_PASSWORD')}"
    mlflow_headers = {"Authorization": f"Basic {base64.b64encode(login.encode()).decode()}"}
    experiments, token = [], None
    while True:
        page = _request(f"{mlflow}/experiments/search", mlflow_headers,
                        {"max_results": 1000, "view_type": "ALL", **({"page_token": token} if token else {})})
        experiments += [experiment["experiment_id"] for experiment in page.get("experiments", [])]
        if not (token := page.get("next_page_token")):
            break
    ended = set()
    for start in range(0, len(experiments), 100):
        search = {"experiment_ids": experiments[start:start + 100], "filter": "attributes.status = 'RUNNING'",
                  "max_results": 1000, "run_view_type": "ALL"}
        while found := _request(f"{mlflow}/runs/search", mlflow_headers, search).get("runs"):
            for run in found:
                run_id = run["info"]["run_id"]
                _once(ended, run_id, "MLflow run")
                for key, value in ((FAILURE_TAG, IN_PROGRESS_AT_BACKUP), (FAILURE_DETAIL_TAG, note)):
                    _request(f"{mlflow}/runs/set-tag", mlflow_headers, {"run_id": run_id, "key": key, "value": value})
                _request(f"{mlflow}/runs/update", mlflow_headers,
                         {"run_id": run_id, "status": "FAILED", "end_time": int(time.time() * 1000)})
    return flow_runs, len(ended)


def _once(ended: set[str], identifier: str, what: str) -> None:
    """Notes ``identifier`` as ended; one found in progress again was not ended by the server."""
    if identifier in ended:
        raise Refused(f"the restored server kept {what} {identifier} in progress after it was ended",
                      "end it in the UI; the rest of the restore is done", 70)
    ended.add(identifier)


def restore(root: Path, archive: Path, say=say) -> dict:
    """The archive onto the empty stack of the clone at ``root``, checked against its manifest
    before the stack is even looked for; returns the manifest."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dae-restore-") as work:
        say(f"restore: checking {archive}")
        manifest = check_archive(archive, into=Path(work))
        stack = Stack.of(root)
        say("restore: starting PostgreSQL and the artifact store")
        _require_empty(stack)
        stack.run("stop", *WRITERS)  # none runs on a new stack; none may write while it loads
        for part, entry in manifest["databases"].items():
            say(f"restore: database {stack.database(part)} ({entry['bytes'] / 1e6:.1f} MB)")
            _load_database(stack, part, entry, Path(work) / entry["file"])
        say(f"restore: artifacts ({manifest['artifacts']['objects']} objects)")
        _load_bucket(stack, Path(work) / ARTIFACTS)
    say("restore: starting the servers on the restored databases")
    stack.run("up", "-d", "prefect-server", "mlflow")
    stack.wait_healthy("prefect-server", "mlflow")
    flow_runs, runs = _end_what_was_in_progress(stack, manifest)
    say("restore: starting the rest of the stack")
    stack.run("up", "-d", "--build")
    data = stack.settings.get("DATA_DIR")
    if data:  # as docker/team-setup.sh: MNIST is not in the archive
        say(f"restore: copying {data}/MNIST into the workers' data volume")
        with subprocess.Popen(["tar", "-C", data, "-c", "MNIST"], stdout=subprocess.PIPE) as packed:
            stack.run("exec", "-T", "worker", "tar", "-C", "/data", "-x", stdin=packed.stdout)
    rows = sum(sum(entry["tables"].values()) for entry in manifest["databases"].values())
    say(f"restore: done in {time.monotonic() - started:.0f} s: the backup of {manifest['created']} (release "
        f"{manifest['release']}), {rows} rows and {manifest['artifacts']['objects']} artifacts, each checked; "
        f"{flow_runs} flow runs and {runs} MLflow runs that were in progress ended as such")
    return manifest


def _require_empty(stack: Stack) -> None:
    """PostgreSQL and the store started, the databases made; refused unless they hold nothing."""
    stack.run("up", "-d", "postgres", "s3")
    stack.wait_healthy("postgres", "s3")
    stack.run("run", "--rm", "-T", "databases")  # its databases and role, made where missing
    holding = [stack.database(part) for part in DATABASES if _tables(stack, stack.database(part))]
    stored = len(json.loads(stack.bucket("list") or "{}"))
    if holding or stored:
        what = ", ".join([*(f"database {name}" for name in holding), *([f"{stored} artifacts"] if stored else [])])
        raise Refused(f"this stack is not empty ({what}); nothing was changed",
                      "restore onto a new stack: `docker compose down --volumes` deletes this one's records "
                      "(back them up first), then restore again", 69)


def _load_database(stack: Stack, part: str, entry: dict, dump: Path) -> None:
    """One dump loaded whole or not at all, then each table's rows compared with the manifest."""
    database = stack.database(part)
    owner = ["--role", stack.setting("TUNING_DB_USER", "dae_tuning")] if part == "tuning" else []
    with open(dump, "rb") as handle:
        stack.run("exec", "-T", "postgres", "pg_restore", "-U", stack.setting("POSTGRES_USER"), "-d", database,
                  "--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error", *owner, stdin=handle)
    restored = _rows(stack, database, sorted(entry["tables"]))
    if restored != entry["tables"]:
        differing = sorted(t for t in entry["tables"] if restored.get(t) != entry["tables"][t])
        raise Refused(f"database {database} restored with other row counts than its dump "
                      f"({', '.join(differing[:3])})", "report it, with the archive's manifest", 70)


def _load_bucket(stack: Stack, artifacts: Path) -> None:
    """The archive's objects into the bucket, then its keys and sizes compared with them."""
    with open(artifacts, "rb") as handle:
        stack.bucket("load", stdin=handle)
    with tarfile.open(artifacts, "r:") as copied:
        expected = {member.name: member.size for member in copied}
    if json.loads(stack.bucket("list") or "{}") != expected:
        raise Refused("the artifact bucket does not hold what the archive does after loading it",
                      "see `docker compose logs s3 mlflow`, then restore again onto an empty stack", 70)


def _end_what_was_in_progress(stack: Stack, manifest: dict) -> tuple[int, int]:
    note = (f"in progress when the backup of {manifest['created']} was made; restored without its end "
            "(run it again)")
    try:
        return end_runs_in_progress(stack, note)
    except urllib.error.HTTPError as error:
        raise Refused(f"the restored servers refused a request (HTTP {error.code} from {error.url})",
                      "restore with the .env of the stack the archive came from (the login's passwords are "
                      "in the archive, the secrets in .env)", 70) from None


# --- the command ------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack_archive.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    backing_up = commands.add_parser("backup", help="write one archive of the running stack")
    backing_up.add_argument("--to", type=Path, default=Path("backups"), metavar="DIR",
                            help="the folder for the archive (default backups/ in the clone)")
    for name, text in (("check", "check an archive against its manifest (touches no stack)"),
                       ("restore", "restore an archive onto an empty stack")):
        commands.add_parser(name, help=text).add_argument("archive", type=Path)
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    try:
        if args.command == "check":
            manifest = check_archive(args.archive)
            print(f"{args.archive}: sound; the backup of {manifest['created']} (release {manifest['release']})")
        elif args.command == "backup":
            backup(Stack.of(root), args.to if args.to.is_absolute() else Path.cwd() / args.to)
        else:
            restore(root, args.archive)
    except Refused as refusal:
        print(f"stack_archive: {refusal.cause}\n  fix: {refusal.fix}", file=sys.stderr)
        return refusal.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
