"""search() on the reference's vector snapshots (tests/data/shardyfusion-vector):
the reference's ids, payloads and order, its scores within 1e-5."""

import asyncio
import json
import struct

import shardforge
from conftest import REPO

VECTORS = REPO / "tests" / "data" / "shardyfusion-vector"
EXPECTED = json.loads((VECTORS / "expected.json").read_text())


def query_of(q):
    raw = bytes.fromhex(q["vector_f32le_hex"])
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def check(name, got, want):
    assert [h["id"] for h in got] == [w["id"] for w in want], name
    assert [h["payload"] for h in got] == [w["payload"] for w in want], name
    for h, w in zip(got, want):
        assert abs(h["score"] - w["score"]) < 1e-5, (name, h["score"], w["score"])


def test_search_answers_as_the_reference_did(cache_dir):
    searched = 0
    for name, s in EXPECTED["sets"].items():
        url = str(VECTORS / s["local_prefix"] / "_CURRENT")
        with shardforge.Reader(url, cache_dir=cache_dir) as r:
            for q in s["queries"]:
                for search in q["searches"]:
                    got = r.search(
                        query_of(q),
                        top_k=EXPECTED["top_k"],
                        num_probes=search["num_probes"],
                        shard_ids=search["shard_ids"],
                    )
                    check(f"{name} {q['name']}", got, search["results"])
                    assert all(h["run_id"] == s["write"]["run_id"] for h in got)
                    searched += 1
            for g in s.get("gets", []):
                want = None if g["value"] is None else g["value"]["__bytes__"].encode()
                assert r.get(g["key"]) == want, (name, g["key"])
    assert searched >= 40, searched


def test_search_through_asyncio_and_bad_queries(cache_dir):
    s = EXPECTED["sets"]["unified_hash"]
    q = s["queries"][0]
    search = q["searches"][0]

    async def main():
        r = await shardforge.AsyncReader.open(str(VECTORS / s["local_prefix"] / "_CURRENT"), cache_dir=cache_dir)
        got = await r.search(query_of(q), top_k=EXPECTED["top_k"], shard_ids=search["shard_ids"])
        check("async", got, search["results"])
        # A query of the wrong length is the reader's configuration error.
        try:
            await r.search([1.0, 2.0])
        except shardforge.ConfigError as e:
            return str(e)
        raise AssertionError("a 2-component query against 8 dimensions was accepted")

    message = asyncio.run(main())
    assert "8" in message, message


def test_a_payload_filter_keeps_the_nearest_matching_vectors(cache_dir):
    s = EXPECTED["sets"]["vec_cluster"]
    assert s["params"]["metric"] == "l2"
    q = query_of(s["queries"][0])
    # The exhaustive answer among the rows whose payload says blue.
    blue = []
    for row in s["rows"]:
        if (row.get("payload") or {}).get("label") == "blue":
            raw = bytes.fromhex(row["vector_f32le_hex"])
            v = struct.unpack(f"<{len(raw) // 4}f", raw)
            blue.append((sum((a - b) ** 2 for a, b in zip(v, q)) ** 0.5, row["id"]))
    blue.sort()
    assert len(blue) > 5, len(blue)
    every_shard = list(range(s["manifest"]["required"]["num_dbs"]))
    url = str(VECTORS / s["local_prefix"] / "_CURRENT")
    with shardforge.Reader(url, cache_dir=cache_dir) as r:
        got = r.search(q, top_k=5, shard_ids=every_shard, filter='label == "blue"')
        assert [h["id"] for h in got] == [i for _, i in blue[:5]]
        assert all(h["payload"]["label"] == "blue" for h in got)
        for h, (d, _) in zip(got, blue):
            assert abs(h["score"] - d) < 1e-4, (h["score"], d)
        # Unfiltered, the nearest rows are not all blue: the filter did the work.
        plain = r.search(q, top_k=5, shard_ids=every_shard)
        assert [h["id"] for h in plain] != [h["id"] for h in got]
        # A predicate that does not compile is the reader's configuration error.
        try:
            r.search(q, top_k=5, filter="label ==")
        except shardforge.ConfigError:
            pass
        else:
            raise AssertionError("a broken filter was accepted")
