"""The `llm-unlearn` command: `demo`; the recipes `finetune`, `unlearn`, `sisa` and `eval`; `methods` (each
method's `method_args`); `report`; the CI `gate`; `forget` (deletion requests); `push` (publish on the Hub)."""

from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import sys
from typing import Any

import yaml

from llm_unlearn.config_files import check_known_options, check_no_unknown_flags, read_config
from llm_unlearn.resources import config_path

# Subcommand -> module with `make_parser(prog=...)` and `main(*parsed)`; imported only when used, because
# loading transformers and trl takes seconds.
COMMANDS = {
    "demo": ("llm_unlearn.commands.demo", "Offline end-to-end run: fine-tune, unlearn, evaluate, print a table."),
    "finetune": ("llm_unlearn.commands.finetune", "Fine-tune the target model or the retain model."),
    "unlearn": ("llm_unlearn.commands.unlearn", "Unlearn a forget set with a registered method."),
    "methods": ("llm_unlearn.commands.methods", "List the unlearning methods, or show one method's method_args."),
    "eval": ("llm_unlearn.commands.evaluate", "Evaluate a model on forget/retain data; write eval.json."),
    "gate": (
        "llm_unlearn.commands.gate",
        "Check eval.json against thresholds; exit 0 pass, 1 fail, 2 bad input.",
    ),
    "report": ("llm_unlearn.commands.report", "Write report.md and report.html (plots) from eval.json."),
    "sisa": (
        "llm_unlearn.commands.sisa",
        "Train a SISA ensemble of shard adapters, or delete subjects from one.",
    ),
    "push": ("llm_unlearn.commands.push", "Publish a run's model (or adapter), card and reports on the Hub."),
    "forget": ("llm_unlearn.commands.forget", "Process deletion requests; resumable, recorded in a ledger."),
}


EXIT_BAD_INPUT = 2
# Not 1, which `gate` and `forget` return for a result that fails its checks.
EXIT_UNEXPECTED = 3
EXIT_INTERRUPTED = 130  # as a shell reports a command stopped by Ctrl-C
DEBUG_ENV = "LLM_UNLEARN_DEBUG"
# Errors that mean the input is wrong or unavailable (files, values, the ledger, the Hub's HTTP errors, which are
# OSErrors), not a bug: the library raises these with a message that names what is wrong.
BAD_INPUT = (ValueError, OSError, sqlite3.Error, yaml.YAMLError)
OUT_OF_MEMORY_ADVICE = (
    "lower per_device_train_batch_size (raising gradient_accumulation_steps to keep the global batch) or the suite's "
    "batch_size, train LoRA adapters (--use_peft true), or load the model in bfloat16 (--dtype bfloat16)"
)

PACKAGED_NOTE = (
    "A relative path to a .yaml under configs/ or eval/ that does not exist in the current directory is read "
    "from the copy packaged with llm_unlearn: `--config configs/builtin/graddiff_lora.yaml` or "
    "`--config eval/builtin.yaml` work from any directory."
)


def with_packaged_configs(args: list[str]) -> list[str]:
    """`args` with each missing configs/...yaml or eval/...yaml path (also in `--flag=PATH`) replaced by the
    packaged file of the same relative path (`llm_unlearn.resources.config_path`)."""
    replaced = []
    for arg in args:
        if arg.startswith("-"):
            flag, equals, value = arg.partition("=")
            replaced.append(flag + equals + config_path(value) if equals else arg)
        else:
            replaced.append(config_path(arg))
    return replaced


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; each subcommand parses its own arguments (and `--config file.yaml`). Bad input
    (a missing file, a wrong value, an unreadable ledger, a Hub error, memory too small) ends with one message on
    stderr and exit code 2, any other error with exit code 3 and Ctrl-C with 130, never a traceback; `--debug` (or
    LLM_UNLEARN_DEBUG=1) shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    argv = [arg for arg in argv if arg != "--debug"]
    parser = argparse.ArgumentParser(prog="llm-unlearn", description=__doc__, epilog=PACKAGED_NOTE)
    parser.add_argument(
        "command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items())
    )
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    command = parser.parse_args(argv[:1]).command
    if command == "demo":
        # The demo is offline by design; without this, saving an adapter of 'embedded' asks the Hub about it.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    module = importlib.import_module(COMMANDS[command][0])
    recipe_parser = module.make_parser(prog=f"llm-unlearn {command}")
    # argparse would take `--learning_rat` for `--learning_rate`: a typo must be an error, not a guess.
    recipe_parser.allow_abbrev = False
    args = with_packaged_configs(argv[1:])
    # Imported with the command, which loads torch and huggingface_hub anyway.
    from llm_unlearn.compat import HubTransportError

    try:
        check_config_file(args, recipe_parser)
        result = module.main(*parse(recipe_parser, args, command))
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"llm-unlearn {command}: interrupted; a run's output appears only when it is complete.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if debug:
            raise
        code, message = classify_error(error, HubTransportError)
        print(f"llm-unlearn {command}: error: {message}", file=sys.stderr)
        print(f"(run with --debug or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return code
    # `gate` and `forget` return their exit code; the recipes return paths or nothing, which means success.
    return result if isinstance(result, int) else 0


def classify_error(error: Exception, hub_transport_error: type[Exception]) -> tuple[int, str]:
    """The exit code and message for an error that ended a command: bad input (a wrong value or file, the Hub out
    of reach, memory too small for the settings) exits 2 with its message; anything else is unexpected (a bug
    here or in a library), exits 3, and says how to report it."""
    import torch

    if isinstance(error, BAD_INPUT):
        return EXIT_BAD_INPUT, describe_error(error)
    if isinstance(error, hub_transport_error):
        return EXIT_BAD_INPUT, f"the Hugging Face Hub could not be reached ({type(error).__name__}: {error})."
    if isinstance(error, torch.OutOfMemoryError):
        first_line = str(error).splitlines()[0] if str(error) else "out of memory"
        return EXIT_BAD_INPUT, f"out of memory ({first_line}); {OUT_OF_MEMORY_ADVICE}."
    return EXIT_UNEXPECTED, (
        f"unexpected {type(error).__name__}: {error}. This is likely a bug in llm_unlearn or a library it uses; "
        f"please report it with the traceback that --debug shows."
    )


def parse(parser: argparse.ArgumentParser, args: list[str], command: str) -> tuple[Any, ...]:
    """The command's parsed arguments; a flag no option takes is named with the closest option, not in the
    parser's words (which speak of HfArgumentParser)."""
    if not hasattr(parser, "dataclass_types"):
        return parser.parse_args_and_config(args)
    *parsed, remaining = parser.parse_args_and_config(args, return_remaining_strings=True)
    check_no_unknown_flags(remaining, tuple(parser.dataclass_types), command)
    return tuple(parsed)


def check_config_file(args: list[str], parser: argparse.ArgumentParser) -> None:
    """Name the options of the `--config` file that the command does not take, with the closest it does, before
    the parser's own message (which speaks of dataclasses) can."""
    if "--config" not in args or not hasattr(parser, "dataclass_types"):
        return
    index = args.index("--config") + 1
    if index < len(args):
        # TrlParser takes `env:` (environment variables to set) besides the dataclasses' fields.
        check_known_options(read_config(args[index]), tuple(parser.dataclass_types), args[index], also=("env",))


def describe_error(error: BaseException) -> str:
    """The error's message; for an OS, SQLite, decoding or YAML error also its kind, which the message alone
    omits."""
    message = str(error) or type(error).__name__
    if isinstance(error, OSError | sqlite3.Error | UnicodeError | yaml.YAMLError):
        return f"{type(error).__name__}: {message}"
    return message


if __name__ == "__main__":
    sys.exit(main())
