"""docker/stack_archive.py without Docker: the archive it writes and refuses, the row counts
it takes from a real pg_dump, the bucket copy through a real S3 server (moto), and
docker/postgres-init.sh run twice on the local PostgreSQL. The stack itself (backup while
training, `down --volumes`, restore, every record compared) is the compose test's."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docker" / "stack_archive.py"
PG = {"PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres"}


def _load():
    spec = importlib.util.spec_from_file_location("stack_archive", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a script beside docker-compose.yml, not a package module
    spec.loader.exec_module(module)
    return module


stack_archive = _load()


def _archive(folder: Path, seed: int = 0) -> tuple[Path, dict[str, bytes]]:
    """An archive as backup writes one: four dumps and the bucket's tar, with their manifest."""
    parts = {f"databases/{part}.dump": os.urandom(300 + 97 * i) for i, part in enumerate(stack_archive.DATABASES)}
    parts[stack_archive.ARTIFACTS] = os.urandom(5000 + seed)
    files = {}
    for name, data in parts.items():
        path = folder / "parts" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files[name] = path
    databases = {part: {"database": part, "file": f"databases/{part}.dump", "tables": {"public.t": 1},
                        "bytes": len(parts[f"databases/{part}.dump"]),
                        "sha256": stack_archive.sha256_of(files[f"databases/{part}.dump"])}
                 for part in stack_archive.DATABASES}
    manifest = {"format": stack_archive.FORMAT, "created": "2026-12-07T00:00:00Z", "release": "1.0.0",
                "commit": "x", "databases": databases,
                "artifacts": {"file": stack_archive.ARTIFACTS, "bytes": len(parts[stack_archive.ARTIFACTS]),
                              "sha256": stack_archive.sha256_of(files[stack_archive.ARTIFACTS]), "objects": 0}}
    destination = folder / "backup.tar"
    stack_archive.write_archive(destination, manifest, files)
    return destination, parts


def test_an_archive_checks_sound_and_gives_back_its_parts_byte_for_byte(tmp_path):
    archive, parts = _archive(tmp_path)
    assert oct(archive.stat().st_mode & 0o777) == "0o600"  # password hashes and secret blocks inside
    assert not list(tmp_path.glob(".*partial"))
    out = tmp_path / "out"
    manifest = stack_archive.check_archive(archive, into=out)
    assert manifest["release"] == "1.0.0"
    assert {name: (out / name).read_bytes() for name in parts} == parts


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_or_truncated_archive_is_refused_in_one_line_or_gives_back_every_byte(tmp_path, data):
    """Any byte changed or any tail cut: refused, or (damage in the tar's padding) every part
    comes back exactly as it was written. Never a part with other bytes."""
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    archive, parts = _archive(folder)
    raw = bytearray(archive.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        damaged = bytes(raw[:data.draw(st.integers(0, len(raw) - 1), label="keep")])
    else:
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[at] ^= data.draw(st.integers(1, 255), label="xor")
        damaged = bytes(raw)
    archive.write_bytes(damaged)
    out = folder / "out"
    try:
        stack_archive.check_archive(archive, into=out)
    except stack_archive.ArchiveDamaged as refusal:
        assert refusal.exit_code == 65 and "\n" not in refusal.cause and "nothing was changed" in refusal.cause
        return
    assert {name: (out / name).read_bytes() for name in parts} == parts


@pytest.mark.parametrize("content", ["not a tar at all", "tar without a manifest", "a manifest of another kind"])
def test_what_is_not_a_backup_is_refused(tmp_path, content):
    path = tmp_path / "other.tar"
    if content == "not a tar at all":
        path.write_bytes(b"PK\x03\x04" + os.urandom(2000))
    else:
        (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else/1"}))
        (tmp_path / "notes.txt").write_text("hello")
        with tarfile.open(path, "w") as archive:
            archive.add(tmp_path / ("notes.txt" if content == "tar without a manifest" else "manifest.json"),
                        arcname="notes.txt" if content == "tar without a manifest" else "manifest.json")
    with pytest.raises(stack_archive.ArchiveDamaged):
        stack_archive.check_archive(path)


def test_restore_refuses_a_damaged_archive_before_it_looks_for_a_stack(tmp_path):
    """No docker on PATH at all: the refusal names the archive, so nothing was asked of a stack."""
    archive, _ = _archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[:-3000])
    done = subprocess.run([sys.executable, str(SCRIPT), "restore", str(archive)], capture_output=True, text=True,
                          env={"PATH": str(tmp_path / "nothing-here")}, timeout=60)
    assert done.returncode == 65, done.stderr
    cause, fix = done.stderr.splitlines()
    assert cause.startswith(f"stack_archive: {archive}: not a complete dae stack backup") and fix.startswith("  fix:")
    assert "Traceback" not in done.stderr


def test_check_says_a_sound_archive_is_sound(tmp_path):
    archive, _ = _archive(tmp_path)
    done = subprocess.run([sys.executable, str(SCRIPT), "check", str(archive)], capture_output=True, text=True)
    assert done.returncode == 0 and "sound; the backup of 2026-12-07T00:00:00Z (release 1.0.0)" in done.stdout


@pytest.fixture
def database():
    name = f"archive_{uuid.uuid4().hex[:10]}"
    subprocess.run(["createdb", name], env={**os.environ, **PG}, check=True)
    yield name
    subprocess.run(["dropdb", "--if-exists", name], env={**os.environ, **PG}, check=True)


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
                       max_size=30))
def test_the_rows_of_each_table_are_counted_from_a_real_dump(database, tmp_path, values):
    """Values with newlines, tabs, backslashes and a line reading \\. each stay one row."""
    values = [*values, "line one\nline two", "\\.", "tab\there"]
    sql = ("SET client_min_messages = warning; DROP TABLE IF EXISTS notes, empty, \"Odd Name\";"
           " CREATE TABLE notes (body text); CREATE TABLE empty (x int);"
           " CREATE TABLE \"Odd Name\" (x int); INSERT INTO \"Odd Name\" VALUES (1), (2);")
    env = {**os.environ, **PG}
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql], env=env, check=True)
    copy = subprocess.run(["psql", "-q", "-d", database, "-c", "COPY notes FROM STDIN WITH (FORMAT csv)"],
                          input="".join('"' + v.replace('"', '""') + '"\n' for v in values), text=True, env=env)
    assert copy.returncode == 0, copy.stderr
    dump = tmp_path / "db.dump"
    subprocess.run(["pg_dump", "-Fc", "-d", database, "-f", str(dump)], env=env, check=True)
    sql = subprocess.run(["pg_restore", "--data-only", "-f", "-", str(dump)], env=env, check=True,
                         capture_output=True).stdout
    assert stack_archive.rows_by_table(io.BytesIO(sql)) == {
        "public.notes": len(values), "public.empty": 0, 'public."Odd Name"': 2}


def test_the_bucket_copies_out_and_back_through_a_real_s3_server(tmp_path):
    """BUCKET_SCRIPT as the MLflow server's Python runs it, against moto's S3 server: every
    key (nested, long, not ASCII) and every byte comes back."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "k",
               "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], aws_access_key_id="k",
                          aws_secret_access_key="s", region_name="us-east-1")
        s3.create_bucket(Bucket="source")
        objects = {"1/abc/artifacts/figures/a.png": os.urandom(70_000), "empty": b"",
                   f"1/{'x' * 150}/model/weights.bin": os.urandom(3000), "1/élève/ünï.txt": "é".encode()}
        for key, body in objects.items():
            s3.put_object(Bucket="source", Key=key, Body=body)

        def bucket(mode: str, name: str, stdin=None) -> bytes:
            return subprocess.run([sys.executable, "-c", stack_archive.BUCKET_SCRIPT, mode, name], input=stdin,
                                  env=env, capture_output=True, check=True, timeout=120).stdout

        dumped = bucket("dump", "source")
        assert json.loads(bucket("list", "restored")) == {}  # a bucket not there yet holds nothing
        bucket("load", "restored", stdin=dumped)
        assert json.loads(bucket("list", "restored")) == {key: len(body) for key, body in objects.items()}
        assert {key: s3.get_object(Bucket="restored", Key=key)["Body"].read() for key in objects} == objects
    finally:
        server.stop()


def _init(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(REPO / "docker" / "postgres-init.sh")], env={**os.environ, **PG, **env},
                          capture_output=True, text=True, timeout=120)


def test_the_databases_are_made_where_missing_at_every_start(tmp_path):
    """docker/postgres-init.sh on a server holding none of them, then again (a restart, an
    upgrade): the same four databases, the role's password from the second run."""
    suffix = uuid.uuid4().hex[:8]
    names = {"PREFECT_DB": f"p_{suffix}", "MLFLOW_DB": f"m_{suffix}", "MLFLOW_AUTH_DB": f"a_{suffix}",
             "TUNING_DB": f"o_{suffix}", "TUNING_DB_USER": f"t_{suffix}"}
    env = {**os.environ, **PG}
    try:
        first = _init({**names, "TUNING_DB_PASSWORD": "first-password"})
        assert first.returncode == 0, first.stderr
        second = _init({**names, "TUNING_DB_PASSWORD": "second password with 'quotes'"})
        assert second.returncode == 0 and second.stderr == "", second.stderr
        listed = subprocess.run(["psql", "-At", "-d", "postgres", "-c",
                                 f"SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname LIKE "
                                 f"'%\\_{suffix}' ORDER BY 1"], env=env, capture_output=True, text=True).stdout
        assert listed.split() == sorted([f"a_{suffix}|postgres", f"m_{suffix}|postgres", f"o_{suffix}|t_{suffix}",
                                         f"p_{suffix}|postgres"])
        as_role = {**env, "PGUSER": f"t_{suffix}", "PGPASSWORD": "second password with 'quotes'"}
        login = subprocess.run(["psql", "-h", "127.0.0.1", "-At", "-d", f"o_{suffix}", "-c", "SELECT current_user"],
                               env=as_role, capture_output=True, text=True)
        assert login.stdout.strip() == f"t_{suffix}", login.stderr
        trgm = subprocess.run(["psql", "-At", "-d", f"p_{suffix}", "-c",
                               "SELECT extname FROM pg_extension WHERE extname = 'pg_trgm'"],
                              env=env, capture_output=True, text=True).stdout
        assert trgm.strip() == "pg_trgm"
    finally:
        for name in ("PREFECT_DB", "MLFLOW_DB", "MLFLOW_AUTH_DB", "TUNING_DB"):
            subprocess.run(["dropdb", "--if-exists", names[name]], env=env)
        subprocess.run(["psql", "-q", "-d", "postgres", "-c", f"DROP ROLE IF EXISTS t_{suffix}"], env=env)
