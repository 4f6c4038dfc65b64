"""The short version of bench/fuzz.py: every subscription and service of every node kind gets generated malformed
and extreme messages, and every node must still be alive and give the right answer to a valid question after."""

import json
import pathlib
import sys

from conftest import finish

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "fuzz.py"
PER_ENDPOINT = 8


def test_no_node_kind_crashes_hangs_or_answers_wrong_after_a_short_fuzz(processes, tmp_path):
    out = tmp_path / "fuzz.json"
    bench = processes.start(sys.executable, BENCH, "--per-endpoint", str(PER_ENDPOINT), "--seconds", "120",
                            "--jobs", "3", "--seed", "1", "--json", out, "--log", tmp_path / "nodes.log")
    code, output = finish(bench, timeout_s=900)
    assert out.exists(), output
    figures = json.loads(out.read_text())
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in tmp_path.glob("nodes*.log"))
    assert (figures["crashes"], figures["hangs"], figures["wrong_answers"]) == (0, 0, 0), f"{output}\n{logs}"
    assert code == 0, output
    kinds = {t["target"] for t in figures["targets"]}
    assert {"chain", "camera_encoder", "host_agent", "coordinator", "trainers", "reporter"} <= kinds
    for target in figures["targets"]:
        assert target["endpoints"] >= 7, target  # the node's own endpoints and its parameter services
        assert target["sent"] >= target["endpoints"] * PER_ENDPOINT // 2, target
