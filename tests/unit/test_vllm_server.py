"""The vLLM server's command line, worked out without starting it."""

import json

from roi_agents_vllm import model_length, server_command


def test_context_length_stays_within_the_checkpoints_positions(tmp_path):
    assert model_length(tmp_path) == 1024  # no config: the default
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    assert model_length(tmp_path) == 512  # MiniLM: vLLM refuses more
    command = server_command(tmp_path, port=8000, runner="pooling", python="python")
    assert command[command.index("--max-model-len") + 1] == "512"
    assert command[command.index("--runner") + 1] == "pooling"
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 32768}))
    assert model_length(tmp_path) == 1024
    command = server_command(tmp_path, port=8000, max_model_len=2048, python="python")
    assert command[command.index("--max-model-len") + 1] == "2048"


def test_the_default_log_is_a_new_private_file(tmp_path):
    import stat

    from roi_agents_vllm import VLLMServer

    (tmp_path / "config.json").write_text("{}")
    first, second = VLLMServer(tmp_path), VLLMServer(tmp_path)
    try:
        assert first.log_path != second.log_path
        assert stat.S_IMODE(first.log_path.stat().st_mode) == 0o600
        assert first.log_path.stat().st_size == 0
    finally:
        first.log_path.unlink()
        second.log_path.unlink()
