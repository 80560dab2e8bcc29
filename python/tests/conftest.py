"""Fixtures of the package's tests: snapshots built by the real `sf-write`
(on local files and on the S3 server scripts/test.sh starts) and the
reference's fixtures in tests/data.

Run through `./scripts/test.sh --python` (or the whole suite), which builds
the binaries and the package and exports what these fixtures read:
SHARDFORGE_BIN_DIR (where `sf-write` is), and for S3 AWS_ENDPOINT with
SHARDFORGE_TEST_S3_BUCKET. Without them the tests fail, saying so: they
never pass by skipping.
"""

import os
import pathlib
import subprocess
import urllib.parse
import urllib.request
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "data" / "shardyfusion-v4"


def required_env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run these tests with ./scripts/test.sh --python", pytrace=False)
    return value


@pytest.fixture(scope="session")
def sf_write():
    path = pathlib.Path(required_env("SHARDFORGE_BIN_DIR")) / "sf-write"
    if not path.exists():
        pytest.fail(f"{path} is missing: ./scripts/test.sh builds it", pytrace=False)
    return path


class Builder:
    """Builds snapshots with `sf-write` from a CSV of `rows` (id, name, tag)."""

    def __init__(self, sf_write, workdir):
        self.sf_write = sf_write
        self.workdir = workdir

    def build(self, prefix, *, rows, run_id, tag, key_col="id", num_dbs=4):
        folder = self.workdir / f"job-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        lines = ["id,name,payload"]
        lines += [f"{i},user-{i},{tag}-{i}" for i in range(rows)]
        (folder / "rows.csv").write_text("\n".join(lines) + "\n")
        (folder / "job.toml").write_text(
            f'key_col = "{key_col}"\n'
            "[input]\n"
            'format = "csv"\n'
            'path = "rows.csv"\n'
            "[value]\n"
            'binary_col = "payload"\n'
            "[routing]\n"
            'strategy = "hash"\n'
            f"num_dbs = {num_dbs}\n"
            "[output]\n"
            f'prefix = "{prefix}"\n'
            'backend = "sqlite"\n'
        )
        env = dict(os.environ, SF_OUTPUT__RUN_ID=run_id)
        env.pop("RUST_LOG", None)
        done = subprocess.run(
            [str(self.sf_write), "--config", "job.toml", "--progress", "off"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"sf-write failed ({done.returncode}):\n{done.stderr}"
        return f"{prefix}/_CURRENT"


@pytest.fixture
def builder(sf_write, tmp_path):
    return Builder(sf_write, tmp_path)


@pytest.fixture
def cache_dir(tmp_path):
    path = tmp_path / "cache"
    path.mkdir()
    return str(path)


@pytest.fixture(params=["file", "s3"])
def prefix(request, tmp_path):
    """A fresh snapshot prefix on local files, then on S3."""
    if request.param == "file":
        return str(tmp_path / "snap")
    return s3_prefix(request.node.name)


def s3_prefix(test):
    bucket = required_env("SHARDFORGE_TEST_S3_BUCKET")
    endpoint = required_env("AWS_ENDPOINT")
    host = urllib.parse.urlsplit(endpoint).hostname
    assert host == "127.0.0.1", f"AWS_ENDPOINT must be on 127.0.0.1, not {endpoint}"
    safe = "".join(c if c.isalnum() else "-" for c in test)
    return f"s3://{bucket}/py-{safe}-{uuid.uuid4().hex[:12]}"


def upload_tree(folder, url):
    """Copies a local folder to an s3:// prefix with plain PUTs (the test
    server takes unsigned requests, as scripts/test.sh's bucket creation does)."""
    endpoint = required_env("AWS_ENDPOINT")
    bucket_and_key = url[len("s3://"):]
    count = 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        key = f"{bucket_and_key}/{path.relative_to(folder).as_posix()}"
        req = urllib.request.Request(
            f"{endpoint}/{urllib.parse.quote(key)}",
            data=path.read_bytes(),
            method="PUT",
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200, (r.status, key)
        count += 1
    assert count > 0, f"nothing to upload under {folder}"
