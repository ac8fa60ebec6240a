"""Generate completions for a JSONL file of prompts with any model rho_jax loads.

    python -m rho_jax.generate --model M --prompts prompts.jsonl --output out.jsonl [--tokenizer DIR]
        [--max-new-tokens N] [--temperature T] [--top-p P] [--top-k K] [--stop S ...] [--batch-size B]
        [--seed S] [--chat] [--dtype bfloat16] [--mesh DATA,FSDP,TENSOR]

M: an HF directory or Hub id, a rho_jax training run, one of its checkpoints/<step>, or a rho_jax
model directory. Each prompts row is a JSON object with a `prompt` string, or with `--chat` a
`messages` list that the tokenizer's chat template turns into the prompt. Each output row keeps
the input row's fields and adds `prompt_index` (its row number in the prompts file, from 0),
`completion`, `finish_reason` ("stop", "eos" or "length"), `prompt_tokens` and `completion_tokens`.
Rows are written as they finish; rerunning the same command skips the rows already in the output.
Stop strings are taken literally except for the escapes \\n, \\t and \\\\ (e.g. --stop '\\n\\nQuestion:').

On several processes (a multi-host TPU slice, SLURM, or --coordinator_address ...; see
`rho_jax.training.cluster`) every process runs the command with the same arguments and a --mesh
over all devices; process 0 writes the output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import jax

from rho_jax.generation import SamplingParams, load_generator
from rho_jax.generation.loading import generation_source, generation_tokenizer
from rho_jax.jsonl import json_objects
from rho_jax.sharding import MeshConfig, make_mesh
from rho_jax.training.cluster import add_cluster_arguments, detect_cluster, initialize, is_primary

OUTPUT_FIELDS = ("prompt_index", "completion", "finish_reason", "prompt_tokens", "completion_tokens")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """`text` with \\n, \\t and \\\\ replaced by newline, tab and backslash; other backslashes kept."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mesh(text: str) -> MeshConfig:
    """'1,1,8' -> MeshConfig(data=1, fsdp=1, tensor=8) (one size may be -1: all remaining devices)."""
    parts = text.split(",")
    if len(parts) != 3 or not all(re.fullmatch(r"\s*-?\d+\s*", p) for p in parts):
        raise argparse.ArgumentTypeError(f"invalid --mesh {text!r}; give three sizes DATA,FSDP,TENSOR, e.g. 1,1,8.")
    try:
        return MeshConfig(*(int(p) for p in parts))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"invalid --mesh {text!r}: {err}") from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rho_jax.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="HF directory or Hub id, training run, checkpoint, or model dir")
    parser.add_argument("--prompts", type=Path, required=True, help="JSONL with a `prompt` (or `messages`) per row")
    parser.add_argument("--output", type=Path, required=True, help="JSONL written row by row (resumed if it exists)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    parser.add_argument("--max-new-tokens", type=int, default=SamplingParams.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--stop", nargs="+", default=[], metavar="S", help="stop strings (\\n, \\t, \\\\ unescaped)")
    parser.add_argument("--batch-size", type=int, default=8, help="decode slots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat", action="store_true", help="rows carry `messages`; apply the tokenizer's chat template")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    parser.add_argument("--mesh", type=parse_mesh, default=None, metavar="DATA,FSDP,TENSOR",
                        help="device mesh over all devices, e.g. 1,1,8 (default: the first device only)")
    add_cluster_arguments(parser)
    return parser


def read_prompt_rows(path: Path, chat: bool) -> list[dict[str, Any]]:
    """The rows of the prompts file; a ValueError naming the line of the first bad row."""
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist.")
    key = "messages" if chat else "prompt"
    rows = []
    for where, row in json_objects(path):
        value = row.get(key)
        valid = isinstance(value, str) and value if not chat else isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
        if not valid:
            wanted = ("a non-empty `messages` list of {role, content} objects" if chat else "a non-empty `prompt` string")
            raise ValueError(f"{where}: the row needs {wanted}" + ("" if chat or "messages" not in row
                                                                           else " (it has `messages`: pass --chat)"))
        rows.append(row)
    if not rows:
        raise ValueError(f"prompts file {path} holds no rows.")
    return rows


def finished_rows(path: Path, rows: list[dict[str, Any]], writer: bool = True) -> set[int]:
    """`prompt_index` of the rows already in the output file (the `writer` drops a partly written
    last line); a ValueError if a row does not belong to these prompts."""
    if not path.exists():
        return set()
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    if complete != text and writer:
        path.write_text(complete)  # the interrupted last row is generated again
    done = set()
    for number, line in enumerate(complete.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err}); write to a new output file.") from err
        index = row.get("prompt_index") if isinstance(row, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(rows) or (
                {k: v for k, v in row.items() if k not in OUTPUT_FIELDS} != rows[index]):
            raise ValueError(f"{path}:{number} does not match row {index} of the prompts; write to a new output file.")
        done.add(index)
    return done


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        initialize(detect_cluster(args))
        writer = is_primary()
        if jax.process_count() > 1 and args.mesh is None:
            raise ValueError(f"{jax.process_count()} processes: give a --mesh over all {jax.device_count()} devices.")
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, stop=tuple(unescape(s) for s in args.stop), seed=args.seed)
        rows = read_prompt_rows(args.prompts, args.chat)
        done = finished_rows(args.output, rows, writer)
        todo = [i for i in range(len(rows)) if i not in done]
        if not todo:
            print(f"all {len(rows)} rows are already in {args.output}.")
            return 0
        tokenizer = generation_tokenizer(generation_source(args.model), args.tokenizer)
        if args.chat:
            if tokenizer.chat_template is None:
                raise ValueError("--chat: the tokenizer has no chat template (tokenizer_config.json `chat_template`).")
            prompts = [tokenizer(tokenizer.apply_chat_template(rows[i]["messages"], tokenize=False,
                                                               add_generation_prompt=True),
                                 add_special_tokens=False)["input_ids"] for i in todo]
        else:
            prompts = [rows[i]["prompt"] for i in todo]
        mesh = make_mesh(args.mesh) if args.mesh is not None else None
        generator = load_generator(args.model, tokenizer=tokenizer, mesh=mesh, dtype=args.dtype,
                                   batch_size=args.batch_size)
        if writer:
            args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("a") if writer else contextlib.nullcontext() as out:
            for position, completion in generator.generate(prompts, params, progress=writer):
                index = todo[position]
                result = {**rows[index], "prompt_index": index, "completion": completion.text,
                          "finish_reason": completion.finish_reason, "prompt_tokens": completion.prompt_tokens,
                          "completion_tokens": len(completion.token_ids)}
                if out is not None:
                    out.write(json.dumps(result, ensure_ascii=False) + "\n")
                    out.flush()
    except (FileNotFoundError, ValueError) as err:  # ClusterError and ConfigError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(todo)} rows to {args.output} ({len(done)} were there already).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
