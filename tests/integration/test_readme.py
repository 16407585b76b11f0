"""Every Python block of the README and the guides runs as a fresh script, against the test
vLLM server: the docs cannot rot."""

import re
import subprocess
import sys

import pytest
from live import ROOT

pytestmark = pytest.mark.integration

DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "benchmarks" / "README.md",
    ROOT / "integrations" / "README.md",
]
BLOCKS = [
    (f"{path.relative_to(ROOT)}#{k + 1}", block)
    for path in DOCS
    for k, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
]


def test_the_readme_has_its_blocks():
    readme = [name for name, _ in BLOCKS if name.startswith("README.md#")]
    assert len(readme) >= 6


@pytest.mark.parametrize(("name", "code"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_a_block_runs_as_written(name, code, tiny_chat_server, tmp_path):
    # As a newcomer would: the block copied into a script, the server's address filled in.
    code = code.replace("http://127.0.0.1:8000/v1", tiny_chat_server.base_url)
    script = tmp_path / "block.py"
    script.write_text(code.replace('"my-model"', '"tiny"'))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()  # each block shows what it did
