"""Prompt formats: how a question and its answer become the tokens a model was trained on.

A format is data (`PromptFormat`): either the tokenizer's chat template, with a system prompt and the date string
that Llama-3 templates print, or tags around the question and the answer, with the tokenizer's BOS token on or
off. Presets name the project's own formats (`auto`, `chat`, `plain`) and those of the published TOFU and MUSE
models (`PRESETS`); a YAML file of `PromptFormat` fields defines any other (docs/benchmarks.md#prompt-formats).

A format tokenizes in one of two ways. `joint=False` (the project's own formats) tokenizes the prompt and the
answer each on its own and concatenates them, so generation from the prompt sees exactly the tokens training
saw. `joint=True` (the published models' formats) tokenizes the whole conversation at once, with the BOS token
when the format has one, takes the prompt's length from tokenizing the prompt alone, and ends the sequence with
the tokenizer's EOS token when the rendering does not already end with it: the tokens those models were trained
and evaluated on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers import PreTrainedTokenizerBase

KINDS = ("chat_template", "tags")
# Llama-3 chat templates print today's date unless given one; a fixed date keeps results reproducible.
PINNED_DATE = "26 Jul 2024"
# Replaced by the tokenizer's EOS token text in a format's tags.
EOS_PLACEHOLDER = "{eos}"
SYSTEM_PLACEHOLDER = "{system}"
EXAMPLE_QA = ("What is the question?", "This is the answer.")


@dataclass(frozen=True)
class PromptFormat:
    """How a question (and its answer) is rendered and tokenized.

    `chat_template`: the tokenizer's chat template over a system message (`system_prompt`, when set), the question
    and the answer, with `date_string` for templates that print a date. `tags`: `system_tags` (with `{system}`
    replaced by `system_prompt`, when set), then `user_start` question `user_end` `assistant_start`, then the
    answer between `answer_start` and `answer_end` (`{eos}` in a tag stands for the tokenizer's EOS token).
    """

    name: str
    kind: str = "chat_template"
    system_prompt: str | None = None
    date_string: str | None = PINNED_DATE
    system_tags: str = ""
    user_start: str = ""
    user_end: str = ""
    assistant_start: str = ""
    answer_start: str = ""
    answer_end: str = ""
    add_bos: bool = False
    joint: bool = False
    end_with_eos: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"prompt format {self.name!r}: kind={self.kind!r} is not known; use one of {KINDS}.")
        if self.system_prompt is not None and self.kind == "tags" and SYSTEM_PLACEHOLDER not in self.system_tags:
            raise ValueError(
                f"prompt format {self.name!r} has no place for a system prompt (its system_tags "
                f"{self.system_tags!r} have no {SYSTEM_PLACEHOLDER}); leave system_prompt out, or use a chat "
                "template or a format whose system_tags have one."
            )

    def with_options(self, *, system_prompt: str | None = None, date_string: str | None = None) -> PromptFormat:
        """This format with a system prompt or date string given by the user in place of the preset's."""
        changes = {"system_prompt": system_prompt, "date_string": date_string}
        return dataclasses.replace(self, **{key: value for key, value in changes.items() if value is not None})

    def render(self, tokenizer: PreTrainedTokenizerBase, question: str, answer: str | None = None) -> tuple[str, str]:
        """The prompt text and the answer's text after it ("" without an answer), without the BOS token that
        tokenization adds."""
        if self.kind == "tags":
            return self._render_tags(tokenizer, question, answer)
        prompt = self._chat(tokenizer, question, None)
        if answer is None:
            return prompt, ""
        full = self._chat(tokenizer, question, answer)
        if not full.startswith(prompt):
            raise ValueError(
                f"the chat template of {tokenizer.name_or_path!r} renders the conversation with a different prefix "
                f"than the generation prompt, so prompt and answer cannot be split; use a tag format (e.g. "
                f"prompt_template='plain')."
            )
        completion = full[len(prompt) :]
        # The template may end a turn with a newline after the end-of-turn token; the project's own chat format
        # does not train on it (a joint format keeps what the template renders, as the published models saw it).
        return prompt, completion if self.joint else completion.rstrip()

    def encode(self, tokenizer: PreTrainedTokenizerBase, question: str, answer: str) -> tuple[list[int], list[int]]:
        """The prompt's token ids and the answer's, which follow them in training and scoring."""
        prompt, completion = self.render(tokenizer, question, answer)
        if not self.joint:
            return _ids(tokenizer, prompt, self.add_bos), _ids(tokenizer, completion, False)
        prompt_ids = _ids(tokenizer, prompt, self.add_bos)
        full_ids = _ids(tokenizer, prompt + completion, self.add_bos)
        if self.end_with_eos and tokenizer.eos_token_id is not None and full_ids[-1:] != [tokenizer.eos_token_id]:
            full_ids.append(tokenizer.eos_token_id)
        # The published models' labels start after as many tokens as the prompt alone has; where a merge spans the
        # boundary, the joint tokenization's first answer token differs from what the prompt alone ends with.
        return prompt_ids, full_ids[len(prompt_ids) :]

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
        """The token ids a generation continues: the prompt as `encode` tokenizes it."""
        return _ids(tokenizer, self.render(tokenizer, question)[0], self.add_bos)

    def example(self, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        """A fixed question and answer as this format tokenizes them, decoded with the special tokens: what run.json
        and eval.json record so that a mismatch between training and evaluation is visible (never a row of the
        data, which records must not hold)."""
        prompt_ids, answer_ids = self.encode(tokenizer, *EXAMPLE_QA)
        return {
            "format": dataclasses.asdict(self),
            "text": tokenizer.decode(prompt_ids + answer_ids),
            "prompt_text": tokenizer.decode(prompt_ids),
            "num_prompt_tokens": len(prompt_ids),
            "num_answer_tokens": len(answer_ids),
        }

    def _render_tags(self, tokenizer: PreTrainedTokenizerBase, question: str, answer: str | None) -> tuple[str, str]:
        eos = tokenizer.eos_token or ""
        system = self.system_tags
        if SYSTEM_PLACEHOLDER in system:
            # A system header with a place for the prompt is left out when there is no prompt to put in it.
            system = system.replace(SYSTEM_PLACEHOLDER, self.system_prompt) if self.system_prompt is not None else ""
        prompt = system + self.user_start + question + self.user_end + self.assistant_start
        if answer is None:
            return prompt, ""
        completion = self.answer_start + answer + self.answer_end
        return prompt, completion.replace(EOS_PLACEHOLDER, eos)

    def _chat(self, tokenizer: PreTrainedTokenizerBase, question: str, answer: str | None) -> str:
        if not tokenizer.chat_template:
            raise ValueError(
                f"prompt format {self.name!r} uses the tokenizer's chat template, but the tokenizer "
                f"{tokenizer.name_or_path!r} has none; use a tag format (e.g. prompt_template='plain')."
            )
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        messages.append({"role": "user", "content": question})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        date = {"date_string": self.date_string} if self.date_string is not None else {}
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=answer is None, **date
        )


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, add_special_tokens: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]


PLAIN = PromptFormat(
    "plain", kind="tags", user_start="Question: ", user_end="\nAnswer:", answer_start=" ", answer_end=EOS_PLACEHOLDER
)
CHAT = PromptFormat("chat")
PRESETS: dict[str, PromptFormat] = {
    "chat": CHAT,
    "plain": PLAIN,
    # The TOFU Llama-2-7b-chat models: `<s>[INST] question [/INST]answer</s>`, no system prompt, no space before
    # the answer.
    "tofu_llama2_chat": PromptFormat(
        "tofu_llama2_chat", kind="tags", user_start="[INST] ", user_end=" [/INST]", add_bos=True, joint=True,
        end_with_eos=True,
    ),
    # The reference framework's Llama-3.x-Instruct TOFU models: the chat template with this system prompt and date.
    "tofu_llama3": PromptFormat(
        "tofu_llama3", system_prompt="You are a helpful assistant.", date_string="10 Apr 2025", joint=True,
        end_with_eos=True,
    ),
    # MUSE's Llama-2 base models: plain question/answer tags after the BOS token.
    "muse": PromptFormat(
        "muse", kind="tags", user_start="Question: ", user_end="\n", assistant_start="Answer: ", add_bos=True,
        joint=True, end_with_eos=True,
    ),
}  # fmt: skip
PROMPT_TEMPLATES = ("auto", *PRESETS)


def check_prompt_template(template: str) -> None:
    """Raise ValueError unless `template` is a preset, `auto`, or a YAML file of `PromptFormat` fields."""
    if template in PROMPT_TEMPLATES:
        return
    if template.endswith((".yaml", ".yml")):
        load_format_file(template)
        return
    raise ValueError(
        f"prompt_template={template!r} is not known; use one of {PROMPT_TEMPLATES}, or a .yaml file of prompt "
        f"format fields ({', '.join(field.name for field in dataclasses.fields(PromptFormat))})."
    )


def load_format_file(path: str) -> PromptFormat:
    """The prompt format a YAML file defines (its fields are `PromptFormat`'s; `name` defaults to the file's)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"prompt_template {path} does not exist; give a preset name or a .yaml file.")
    fields = yaml.safe_load(file.read_text(encoding="utf-8"))
    known = {field.name for field in dataclasses.fields(PromptFormat)}
    if not isinstance(fields, dict) or set(fields) - known:
        unknown = sorted(set(fields) - known) if isinstance(fields, dict) else fields
        raise ValueError(f"prompt_template {path}: {unknown!r} is not accepted; give a mapping of {sorted(known)}.")
    return PromptFormat(**{"name": file.stem, **fields})


def resolve_format(
    tokenizer: PreTrainedTokenizerBase,
    template: str = "auto",
    *,
    system_prompt: str | None = None,
    date_string: str | None = None,
) -> PromptFormat:
    """The prompt format `template` names for `tokenizer` (`auto`: its chat template when it has one, else
    `plain`), with the user's system prompt and date string in place of the preset's."""
    check_prompt_template(template)
    if template == "auto":
        template = "chat" if tokenizer.chat_template else "plain"
    chosen = PRESETS[template] if template in PRESETS else load_format_file(template)
    return chosen.with_options(system_prompt=system_prompt, date_string=date_string)


def format_qa(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    answer: str | None = None,
    *,
    template: str = "auto",
    system_prompt: str | None = None,
    date_string: str | None = None,
) -> tuple[str, str]:
    """The `(prompt, completion)` texts of a QA pair in the format `template` names; `completion` is "" when
    `answer` is None."""
    prompt_format = resolve_format(tokenizer, template, system_prompt=system_prompt, date_string=date_string)
    return prompt_format.render(tokenizer, question, answer)


def rendered_example(
    tokenizer: PreTrainedTokenizerBase,
    template: str = "auto",
    *,
    system_prompt: str | None = None,
    date_string: str | None = None,
) -> dict[str, Any]:
    """`PromptFormat.example` of the format `template` names, for run.json and eval.json."""
    prompt_format = resolve_format(tokenizer, template, system_prompt=system_prompt, date_string=date_string)
    return prompt_format.example(tokenizer)
