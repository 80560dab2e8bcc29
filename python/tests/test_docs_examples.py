"""Every ```python example of docs/python.md, run as written against the S3
server of scripts/test.sh: the bucket, cache folders and endpoint the
examples name are rewritten to the test's own, and a snapshot is built
where the reading examples look for one. A documented example that stops
working fails here."""

import logging
import os
import re

import pytest

import shardforge
from conftest import REPO, required_env, s3_prefix

DOC = REPO / "docs" / "python.md"


def examples():
    text = DOC.read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) >= 5, f"docs/python.md has {len(blocks)} python examples; the test expected at least 5"
    return blocks


def rewrite(code, root, cache):
    """The example with the test's places for the examples' own."""
    code = code.replace("s3://bucket/", f"{root}/")
    code = code.replace("/var/cache/shardforge", cache)
    code = code.replace('"/tmp/c"', repr(cache))
    code = code.replace("http://127.0.0.1:9000", required_env("AWS_ENDPOINT"))
    return code


def test_the_docs_examples_run_as_written(builder, tmp_path):
    root = s3_prefix("docs-examples")
    # The reading examples read s3://bucket/snapshots/users: keys 0..98,
    # so that 99 and 999 are the misses their comments say they are.
    builder.build(f"{root}/snapshots/users", rows=99, run_id="docs", tag="v")
    cache = str(tmp_path / "cache")
    os.makedirs(cache)
    blocks = examples()
    ran = 0
    for i, block in enumerate(blocks):
        code = rewrite(block, root, cache)
        assert "s3://bucket/" not in code, f"example {i} names a bucket the test does not rewrite"
        namespace = {"__name__": f"docs_example_{i}"}
        own = None
        if "reader.get(key)" in code and "shardforge.Reader(" not in code:
            # The error-handling example reads from a reader made earlier.
            own = shardforge.Reader(f"{root}/snapshots/users/_CURRENT", cache_dir=cache)
            namespace.update(reader=own, key=42, log=logging.getLogger("docs"))
        try:
            exec(compile(code, f"docs/python.md example {i}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - the failure names the example
            pytest.fail(f"docs/python.md example {i} failed: {type(e).__name__}: {e}\n{code}")
        finally:
            if own is not None:
                own.close()
        ran += 1
    assert ran == len(blocks)
