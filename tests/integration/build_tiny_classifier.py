"""Build a tiny random sequence-regression checkpoint (run with the vLLM venv's Python).

    python build_tiny_classifier.py OUT_DIR

A WordPiece tokenizer trained on the fly and a 2-layer BERT whose regression head has the
predictor's five outputs (see roi_agents.predict.head). ``problem_type="regression"`` makes
vLLM's /classify return the raw outputs, with no activation.
"""

import sys
from pathlib import Path


def main(out: Path) -> None:
    """Write the tokenizer, config and random weights to ``out``."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    corpus = [
        "[fast] add two numbers",
        "[deep] prove the theorem step by step",
        "[standard] summarise the report",
        "[tool] search the notes",
    ] * 30
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(
        corpus,
        trainers.WordPieceTrainer(
            vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        ),
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[
            ("[CLS]", tokenizer.token_to_id("[CLS]")),
            ("[SEP]", tokenizer.token_to_id("[SEP]")),
        ],
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    hf.save_pretrained(out)
    torch.manual_seed(0)
    labels = [
        "success_logit",
        "log_tokens_mean",
        "log_tokens_log_sigma",
        "log_usd_mean",
        "log_usd_log_sigma",
    ]
    config = BertConfig(
        vocab_size=len(hf),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=256,
        num_labels=len(labels),
        problem_type="regression",
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # a plausible scale: ~e^5 tokens, ~e^-7 USD
        model.classifier.bias.copy_(torch.tensor([0.5, 5.0, -0.5, -7.0, -0.5]))
    model.save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
