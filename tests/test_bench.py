"""Smoke test of the benchmark (`python -m gct_fused.bench --quick`, what CI runs): it runs,
times every provider of every case, and writes consistent JSON, markdown and PNG output.
It checks structure and consistency only; speed goals are judged from the committed
benchmark results, never by timed tests."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(*args, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("GCT_FUSED_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "gct_fused.bench", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def test_quick_run_writes_json_markdown_and_plot(tmp_path):
    paths = {k: tmp_path / f"bench.{k}" for k in ("json", "md", "png")}
    proc = _bench("--quick", "--device", "cpu", "--min-reps", "4", "--json", str(paths["json"]),
                  "--markdown", str(paths["md"]), "--plot", str(paths["png"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(paths["json"].read_text())
    meta, rows = data["metadata"], data["rows"]
    assert meta["device_type"] == "cpu" and meta["torch"] and meta["date"]
    assert meta["providers"][0] == "copy" and "cpu" in meta["providers"] and "eager" in meta["providers"]
    # every (op, layout, mode) of the quick run has one row per provider
    groups = {}
    for r in rows:
        groups.setdefault((r["op"], r["layout"], r["mode"]), set()).add(r["provider"])
    assert {k[0] for k in groups} == {"gct", "se"}
    assert {k[1] for k in groups} == {"nchw", "channels_last"} and {k[2] for k in groups} == {"fwd", "fwdbwd"}
    for key, providers in groups.items():
        assert providers == set(meta["providers"]), key
    for r in rows:
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"], r
        assert r["gbps"] > 0 and r["x_copy"] > 0, r
        assert r["reps"] >= 4, r  # --min-reps, every provider timed as often
        if r["provider"] == "copy":
            assert r["x_copy"] == pytest.approx(1.0)
        if r["provider"] == "cpu":
            eager = next(e for e in rows if e["provider"] == "eager" and
                         (e["op"], e["layout"], e["mode"]) == (r["op"], r["layout"], r["mode"]))
            assert r["speedup_vs_eager"] == pytest.approx(eager["median_ms"] / r["median_ms"])
    fused = [r for r in rows if r["provider"] == "cpu"]
    won = sum(r["speedup_vs_eager"] > 1 for r in fused)
    assert data["summary"][0].startswith(f"cpu: faster than eager in {won} of {len(fused)} cases (least "), data
    assert [line.split(":")[0] for line in data["summary"][1:]] == ["cpu fwd", "cpu fwdbwd"], data["summary"]
    md = paths["md"].read_text()
    assert meta["device"] in md and "| copy |" in md.replace("  ", " ")
    assert all(f"- {line}" in md for line in data["summary"]) and data["summary"][0] in proc.stdout
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _row(case, provider, x_copy, vs_eager=None, vs_compile=None, mode="fwd"):
    from gct_fused.bench import Row
    return Row("gct", case, "8x16x4x4", "nchw", "float32", mode, provider, 1.0, 0.9, 1.1, 10, 1.0, x_copy,
               vs_eager, vs_compile, 0.1)


def test_summary_counts_wins_names_the_least_and_every_loss():
    from gct_fused.bench import summary
    rows = [_row("a", "copy", 1.0), _row("a", "cpu", 1.2, 2.0, 1.5), _row("a", "eager", 2.4),
            _row("b", "cpu", 1.8, 0.9, 1.1), _row("c", "cpu", 1.5, 1.3, 1.0, mode="fwdbwd")]
    lines = summary(rows)
    assert lines[0] == ("cpu: faster than eager in 2 of 3 cases (least 0.90x: gct b 8x16x4x4 nchw float32 fwd); "
                        "not faster in gct b 8x16x4x4 nchw float32 fwd (0.90x)")
    assert lines[1] == ("cpu: faster than torch.compile in 2 of 3 cases (least 1.00x: gct c 8x16x4x4 nchw float32 "
                        "fwdbwd); not faster in gct c 8x16x4x4 nchw float32 fwdbwd (1.00x)")
    assert lines[2] == "cpu fwd: 1.50x a copy of x (median; 1.20-1.80x over 2 cases)"
    assert lines[3] == "cpu fwdbwd: 1.50x a copy of x (median; 1.50-1.50x over 1 case)"
    assert len(lines) == 4


def test_backend_that_cannot_run_is_an_error():
    proc = _bench("--quick", "--device", "cpu", "--backend", "cuda")
    assert proc.returncode == 2 and "cannot run on cpu" in proc.stderr


def test_min_reps_below_one_is_an_error():
    proc = _bench("--quick", "--device", "cpu", "--min-reps", "0")
    assert proc.returncode == 2 and "--min-reps must be at least 1, got 0" in proc.stderr


def test_cache_flush_reads_four_llcs_within_bounds(monkeypatch):
    from gct_fused import bench
    for llc_mb, expected_mb in ((16, 128), (32, 128), (64, 256), (480, 512)):
        monkeypatch.setattr(bench, "_last_level_cache_bytes", lambda mb=llc_mb: mb * 2**20)
        assert bench.CacheFlush(False).bytes == 0
        flush = bench.CacheFlush(True)
        assert flush.bytes == expected_mb * 2**20, llc_mb
        flush()  # reads the buffer, returns nothing


def _script(name, *args, timeout=600):
    env = dict(os.environ)
    env.pop("GCT_FUSED_BACKEND", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


def test_whole_network_smoke():
    """benchmarks/whole_network.py on a small torchvision model: it converts the model (the
    outputs agree, checked inside), times the three variants and prints each."""
    pytest.importorskip("torchvision", reason="torchvision is not installed")
    proc = _script("whole_network.py", "--model", "mobilenet_v3_small", "--resolution", "64", "--reps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("mobilenet_v3_small, batch 1, 64x64") and "9 blocks replaced" in lines[0], lines[0]
    assert [line.strip().split("  ")[0] for line in lines[1:]] == ["original", "converted", "converted, Python path"]
    assert all(line.endswith("x the original's speed") for line in lines[1:]), lines


def test_whole_network_rejects_a_non_positive_count():
    proc = _script("whole_network.py", "--reps", "0")
    assert proc.returncode == 2 and "--reps: expected a positive integer, got 0" in proc.stderr


def test_traffic_floor_smoke():
    """benchmarks/traffic_floor.py on a small map: every callable is timed and the floor and
    its ratios are printed for each op and layout asked for."""
    proc = _script("traffic_floor.py", "--shape", "2x32x8x8", "--reps", "2", "--no-compile")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for op in ("gct", "se"):
        for layout in ("nchw", "channels_last"):
            assert f"{op} 2x32x8x8 {layout}: copy " in out, out
    names = ["read", "write", "fwd", "bwd", "fwd+bwd"]
    timing_lines = [line for line in out.splitlines() if line.startswith("  read ")]
    assert len(timing_lines) == 4, out
    for line in timing_lines:
        assert [tok for tok in line.split() if not tok.replace(".", "").isdigit()] == names, line
    assert out.count("floor (3 reads + 2 writes)") == 4 and "compile" not in out, out


def test_traffic_floor_rejects_a_bad_layout():
    proc = _script("traffic_floor.py", "--layout", "nhwc", "--no-compile")
    assert proc.returncode == 2 and "--layout: expected a comma list of nchw, channels_last" in proc.stderr
