"""The bulk enrollment benchmark (benchmarks/bulk_enrollment.py) works end to end on a tiny run: every
contact is enrolled, by the bulk workflow and by the page run directly. No timing is asserted here."""

from __future__ import annotations

from benchmarks.bulk_enrollment import Options, measure_bulk, parse, table


async def test_the_bulk_benchmark_enrolls_everyone_both_ways(dev_env, db, tmp_path):
    options = Options(n=3, rate=100, concurrency=2, postgres=False)

    measured = await measure_bulk(dev_env.client, db, db, tmp_path, options)

    assert measured["raw"]["started"] == 3
    assert (measured["bulk"]["status"], measured["bulk"]["enrolled"], measured["bulk"]["rows"]) == ("completed", 3, 3)
    assert (measured["page"]["enrolled"], measured["page"]["rows"]) == (3, 3)
    ratios = {"sqlite": {"bulk": 0.5, "page": 0.5}}
    printed = table({"options": {**options.__dict__}, "engine": {"sqlite": measured}, "ratios": ratios})
    assert "bulk, sqlite" in printed and "page, sqlite" in printed and "incomplete" not in printed


def test_the_command_line_sets_the_sizes():
    options, output = parse(["-n", "7", "--rate", "50", "--flow", "short", "--no-postgres", "--output", "/tmp/x.json"])
    assert (options.n, options.rate, options.flow, options.postgres, str(output)) == (7, 50, "short", False, "/tmp/x.json")
