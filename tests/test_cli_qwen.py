"""The README's promise, end to end: the installed `route` console script answers a coding prompt
in-process with the real starter weights (Qwen2.5-Coder-0.5B-Instruct), routed to code_edit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import unused_port




@pytest.mark.qwen
@pytest.mark.timeout(600)
def test_route_writes_a_python_function(qwen_gguf, tmp_path):
    route = Path(sys.executable).with_name("route")
    if not route.exists():
        pytest.skip(f"the `route` console script is not installed next to {sys.executable}: run `make install`")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTE_")}
    env.update(
        ROUTE_CONFIG_FILE=str(tmp_path / "no-config.yaml"),
        ROUTE_PORT=str(unused_port()),  # nothing listens there: the answer comes from this process
        HF_HUB_OFFLINE="1",  # the weights come from the HF cache qwen_gguf found them in
    )
    done = subprocess.run(
        [str(route), "write a python function that reverses a string"],
        env=env, capture_output=True, text=True, timeout=540, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\s*def \w+\(", done.stdout, re.MULTILINE), done.stdout
    decision = next(line for line in done.stderr.splitlines() if line.startswith("→"))
    assert "code_edit" in decision and "qwen2.5-coder-0.5b-instruct" in decision
    assert "Traceback" not in done.stderr
