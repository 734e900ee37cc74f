"""Prompt formatting and label masking, on the tiny test tokenizer and on the real SmolLM2 chat template."""

from __future__ import annotations

import pytest
from datasets import Dataset

from llm_unlearn.data.formatting import (
    IGNORE_INDEX,
    PaddingCollator,
    Truncation,
    encode_qa,
    encode_text,
    tokenize_dataset,
)
from llm_unlearn.data.prompts import format_qa


def answer_part(tokenizer, encoded) -> str:
    kept = [
        tok
        for tok, label in zip(encoded["input_ids"], encoded["labels"], strict=True)
        if label != IGNORE_INDEX
    ]
    return tokenizer.decode(kept)


def test_qa_loss_is_on_answer_tokens_only(tiny_tokenizer):
    encoded = encode_qa(tiny_tokenizer, "Where was Ada born?", "In London.")
    first_answer = encoded["labels"].index(
        next(label for label in encoded["labels"] if label != IGNORE_INDEX)
    )
    assert all(label == IGNORE_INDEX for label in encoded["labels"][:first_answer])
    assert encoded["labels"][first_answer:] == encoded["input_ids"][first_answer:]
    assert answer_part(tiny_tokenizer, encoded) == "In London.<|im_end|>"
    prompt = tiny_tokenizer.decode(encoded["input_ids"][:first_answer])
    assert prompt == "<|im_start|>user\nWhere was Ada born?<|im_end|>\n<|im_start|>assistant\n"


def test_plain_template_for_tokenizers_without_chat_template(tiny_tokenizer):
    from conftest import build_tiny_tokenizer

    plain = build_tiny_tokenizer(chat_template=False)
    assert format_qa(plain, "Q?", "A.") == ("Question: Q?\nAnswer:", " A.<|im_end|>")
    assert format_qa(plain, "Q?") == ("Question: Q?\nAnswer:", "")
    with pytest.raises(ValueError, match=r"uses the tokenizer's chat template, but the tokenizer '' has none; use a tag format"):
        format_qa(plain, "Q?", "A.", template="chat")
    with pytest.raises(ValueError, match="prompt_template='jinja' is not known"):
        format_qa(tiny_tokenizer, "Q?", "A.", template="jinja")


def test_text_is_trained_on_every_token(tiny_tokenizer):
    encoded = encode_text(tiny_tokenizer, "The quick brown fox jumps over the lazy dog.")
    assert encoded["labels"] == encoded["input_ids"]
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        encode_text(tiny_tokenizer, "")


def test_max_length_truncates_and_refuses_to_drop_the_whole_answer(tiny_tokenizer):
    full = encode_qa(tiny_tokenizer, "Where was Ada born?", "In London.")
    prompt_len = full["labels"].count(IGNORE_INDEX)
    cut = encode_qa(tiny_tokenizer, "Where was Ada born?", "In London.", max_length=prompt_len + 1)
    assert len(cut["input_ids"]) == prompt_len + 1 and cut["labels"][-1] != IGNORE_INDEX
    with pytest.raises(ValueError, match="leaves no answer tokens"):
        encode_qa(tiny_tokenizer, "Where was Ada born?", "In London.", max_length=prompt_len)


def test_collator_masks_by_length_even_when_pad_is_end_of_turn(tiny_tokenizer):
    long = encode_qa(tiny_tokenizer, "Where was Ada born?", "In London.")
    short = encode_qa(tiny_tokenizer, "Q?", "A.")
    batch = PaddingCollator(tiny_tokenizer.pad_token_id)([long, short])
    eos = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tiny_tokenizer.pad_token_id == eos
    # Every real <|im_end|> inside the sequences stays visible; only the padding is masked.
    assert batch["attention_mask"][0].tolist() == [1] * len(long["input_ids"])
    assert batch["attention_mask"][1].tolist() == [1] * len(short["input_ids"]) + [0] * (
        len(long["input_ids"]) - len(short["input_ids"])
    )
    assert (batch["input_ids"][1] == eos).sum().item() > (batch["attention_mask"][1] == 0).sum().item()
    assert (batch["labels"][1, len(short["input_ids"]) :] == IGNORE_INDEX).all()


def test_tokenize_dataset_handles_qa_and_text_and_rejects_others(tiny_tokenizer):
    qa = Dataset.from_list([{"question": "Q?", "answer": "A.", "subject_id": "x"}])
    assert tokenize_dataset(qa, tiny_tokenizer)[0].column_names == ["input_ids", "labels"]
    text = Dataset.from_list([{"text": "Hello there, general reader."}])
    tokenized, _ = tokenize_dataset(text, tiny_tokenizer)
    assert tokenized[0]["labels"] == tokenized[0]["input_ids"]
    with pytest.raises(
        ValueError, match=r"needs a 'question' and 'answer' column or a 'text' column.*'body'"
    ):
        tokenize_dataset(Dataset.from_list([{"body": "x"}]), tiny_tokenizer)


@pytest.mark.slow
def test_smollm2_chat_template_masks_system_and_user_turns():
    from transformers import AutoTokenizer

    from llm_unlearn.embedded import embedded_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(embedded_checkpoint())
    encoded = encode_qa(tokenizer, "What is the capital of France?", "Paris.")
    assert answer_part(tokenizer, encoded) == "Paris.<|im_end|>"
    prompt_ids = [
        t for t, label in zip(encoded["input_ids"], encoded["labels"], strict=True) if label == -100
    ]
    prompt = tokenizer.decode(prompt_ids)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert "What is the capital of France?<|im_end|>" in prompt
    custom = encode_qa(tokenizer, "Q?", "A.", system_prompt="Be brief.")
    assert "Be brief." in tokenizer.decode(custom["input_ids"])


def test_what_max_length_cuts_is_counted_and_warned(tiny_tokenizer, caplog):
    """A long answer is cut to max_length, and the cut is counted (examples, tokens dropped, the longest
    length) and warned with the data set's name, not silent."""
    long_answer = " ".join(["word"] * 400)
    rows = [{"question": "Q?", "answer": "Short."}, {"question": "Q?", "answer": long_answer}]
    full, nothing_cut = tokenize_dataset(Dataset.from_list(rows), tiny_tokenizer, max_length=None)
    assert nothing_cut.truncated == 0 and nothing_cut.warning("x") is None
    with caplog.at_level("WARNING", logger="llm_unlearn.data.formatting"):
        cut_data, cut = tokenize_dataset(Dataset.from_list(rows), tiny_tokenizer, max_length=64, name="forget set")
    long_length = len(full[1]["input_ids"])
    assert [len(ids) for ids in cut_data["input_ids"]] == [len(full[0]["input_ids"]), 64]
    assert cut == Truncation(max_length=64, examples=2, truncated=1, tokens_dropped=long_length - 64,
                             longest=long_length)  # fmt: skip
    assert cut.warning("forget set") in caplog.text
    assert f"forget set: 1 of 2 examples are longer than max_length=64 tokens (the longest has {long_length})" in (
        caplog.text
    )
    text, text_cut = tokenize_dataset(Dataset.from_list([{"text": long_answer}]), tiny_tokenizer, max_length=64)
    assert len(text[0]["input_ids"]) == 64 and text_cut.truncated == 1 and text_cut.tokens_dropped > 0
