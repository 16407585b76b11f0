"""Every Python block of the README runs as a fresh script, against the test vLLM server."""

import re
import subprocess
import sys

import pytest
from live import ROOT

pytestmark = pytest.mark.integration

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_its_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_a_readme_block_runs_as_written(index, tiny_chat_server, tmp_path):
    # As a newcomer would: the block copied into a script, the server's address filled in.
    code = BLOCKS[index].replace("http://127.0.0.1:8000/v1", tiny_chat_server.base_url)
    script = tmp_path / f"block_{index + 1}.py"
    script.write_text(code.replace('"my-model"', '"tiny"'))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()  # each block shows what it did
