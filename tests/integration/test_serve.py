"""`roi-agents serve`: the vLLM server it starts goes when it is stopped."""

import re
import signal
import subprocess
import sys

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_sigterm_stops_serve_and_its_vllm_server(trained_checkpoint):
    command = [sys.executable, "-m", "roi_agents.cli", "serve", str(trained_checkpoint)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as serve:
        try:
            url = None
            assert serve.stdout is not None
            for line in serve.stdout:  # ends when serve exits: a failed start says why
                found = re.search(r" at (http://[0-9.]+:[0-9]+)", line)
                if found:
                    url = found.group(1)
                    break
            assert url is not None, serve.communicate(timeout=10)[0]
            assert httpx.get(f"{url}/health", timeout=5).status_code == 200
            serve.send_signal(signal.SIGTERM)  # what a process manager sends
            assert serve.wait(timeout=60) == 0
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/health", timeout=5)
        finally:
            if serve.poll() is None:
                serve.kill()
