"""Generation: greedy parity with `transformers`, KV-cache logits, stop strings, EOS, sampling, buckets,
sharding, bf16 and the `python -m rho_jax.generate` command."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rho_jax.generation import Completion, Generator, SamplingParams, load_generator
from rho_jax.generation.buckets import bucket_length, default_bucket
from rho_jax.generation.sampling import SamplingRule, sample_tokens
from rho_jax.generation.stops import completion_text, find_stop, trigger_tokens
from rho_jax.models import ModelOptions, kv_cache, load_hf
from rho_jax.sharding import MeshConfig, make_mesh

prefill = nnx.jit(kv_cache.prefill, static_argnames="cache_length")
decode_step = nnx.jit(kv_cache.decode_step)
VARIANTS = ["llama-gqa", "llama3-rope-scaling", "mistral-sliding-window", "llama-tied-embeddings", "llama-linear-rope-bias"]
PROMPT_LENGTHS = [6, 13, 3, 22, 9]  # longer than the Mistral variant's sliding window (4); mixed in one batch


@pytest.fixture(scope="module")
def generators(tiny_hf_dir):
    """`generators(variant, **options)` -> a cached Generator of the tiny model (2 slots: slots are refilled)."""
    built = {}

    def get(variant: str, **options):
        key = (variant, tuple(sorted(options.items())))
        if key not in built:
            options.setdefault("batch_size", 2)
            built[key] = load_generator(tiny_hf_dir(variant), **options)
        return built[key]

    return get


def token_prompts(lengths=PROMPT_LENGTHS, seed=0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 320, n).tolist() for n in lengths]


def hf_greedy(directory, prompts, max_new_tokens, **kwargs) -> list[list[int]]:
    """transformers' greedy continuation of each prompt, generated row by row (no padding)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    with torch.no_grad():
        return [model.generate(torch.tensor([p]), max_new_tokens=max_new_tokens, do_sample=False, **kwargs)[0, len(p):]
                .tolist() for p in prompts]


def run(generator: Generator, prompts, params: SamplingParams) -> list[Completion]:
    results = dict(generator.generate(prompts, params, progress=False))
    assert sorted(results) == list(range(len(prompts)))
    return [results[i] for i in range(len(prompts))]


# ---- (1) greedy parity with transformers ------------------------------------------------------

def _check_greedy_parity(variant, generators, tiny_hf_dir):
    generator = generators(variant)
    prompts = token_prompts()
    ours = run(generator, prompts, SamplingParams(max_new_tokens=10))
    reference = hf_greedy(tiny_hf_dir(variant), prompts, 10)
    for completion, expected, prompt in zip(ours, reference, prompts):
        assert completion.token_ids == expected
        eos = expected[-1] == 2
        assert completion.finish_reason == ("eos" if eos else "length")
        assert completion.prompt_tokens == len(prompt)
        assert completion.text == generator.tokenizer.decode(expected[:-1] if eos else expected, skip_special_tokens=True)


@pytest.mark.parametrize("variant", ["llama-gqa", "mistral-sliding-window"])
def test_greedy_matches_transformers(variant, generators, tiny_hf_dir):
    _check_greedy_parity(variant, generators, tiny_hf_dir)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["llama3-rope-scaling", "llama-tied-embeddings", "llama-linear-rope-bias"])
def test_greedy_matches_transformers_other_variants(variant, generators, tiny_hf_dir):
    _check_greedy_parity(variant, generators, tiny_hf_dir)


# ---- (2) KV-cache logits == full forward logits -------------------------------------------------

@pytest.mark.parametrize("variant, scan_layers", [(v, True) for v in VARIANTS] + [
    pytest.param(v, False, marks=pytest.mark.slow) for v in VARIANTS])
def test_cached_logits_equal_full_forward_at_every_step(variant, scan_layers, tiny_hf_dir):
    model = load_hf(tiny_hf_dir(variant), options=ModelOptions(scan_layers=scan_layers))
    lengths = np.array([8, 5, 1])
    total, width, steps = 20, 8, 11
    ids = np.random.default_rng(1).integers(0, 320, (3, total)).astype(np.int32)
    full = np.asarray(model(jnp.asarray(ids)))
    padded = np.where(np.arange(width) < lengths[:, None], ids[:, :width], 0)
    logits, cache = prefill(model, jnp.asarray(padded), jnp.asarray(lengths), cache_length=total)
    np.testing.assert_allclose(logits, full[np.arange(3), lengths - 1], atol=1e-5, rtol=0)
    positions = lengths.copy()
    for _ in range(steps):
        tokens = ids[np.arange(3), positions]
        logits, cache = decode_step(model, cache, jnp.asarray(tokens), jnp.asarray(positions))
        np.testing.assert_allclose(logits, full[np.arange(3), positions], atol=1e-5, rtol=0)
        positions += 1


# ---- (3) stop strings ----------------------------------------------------------------------------

def reference_stop(tokenizer, prompt, tokens, stops):
    """The independent host-side rule: the shortest prefix of the full greedy continuation whose text
    contains a stop string, and that text cut before it."""
    for k in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:k], skip_special_tokens=True)
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return tokens[:k], text[: hits[0]]
    return None


def ascii_stops(texts: list[str]) -> tuple[str, ...]:
    """Two-character printable substrings from the middle of two continuations (so they occur)."""
    stops = []
    for text in texts:
        for start in range(len(text) // 3, len(text) - 1):
            piece = text[start:start + 2]
            if piece.isascii() and piece.isprintable() and piece.strip() == piece and piece not in stops:
                stops.append(piece)
                break
    return tuple(stops[:2])


def test_stop_strings_end_output_where_vllm_would(generators, tiny_hf_dir):
    generator = generators("llama-gqa")
    tokenizer = generator.tokenizer
    prompts = token_prompts(seed=3)
    full = run(generator, prompts, SamplingParams(max_new_tokens=40))
    texts = [c.text for c in full]
    stops = ascii_stops(texts[:2])
    assert len(stops) == 2
    stopped = run(generator, prompts, SamplingParams(max_new_tokens=40, stop=stops))
    hf = hf_greedy(tiny_hf_dir("llama-gqa"), prompts, 40, stop_strings=list(stops), tokenizer=tokenizer)
    n_stopped = 0
    for prompt, whole, ours, theirs in zip(prompts, full, stopped, hf):
        expected = reference_stop(tokenizer, prompt, whole.token_ids, stops)
        if expected is None:
            assert (ours.token_ids, ours.finish_reason) == (whole.token_ids, whole.finish_reason)
            continue
        n_stopped += 1
        assert (ours.token_ids, ours.text, ours.finish_reason) == (*expected, "stop")
        assert ours.token_ids == theirs  # transformers stops after the same token
        # nothing past the stop: the text before the completing token holds no stop string
        before = tokenizer.decode(ours.token_ids[:-1], skip_special_tokens=True)
        assert not any(s in before for s in stops) and not any(s in ours.text for s in stops)
    assert n_stopped >= 2


def test_the_loop_stops_at_the_token_that_completes_a_stop_string(tiny_hf_dir, monkeypatch):
    """With the trigger table, no token is generated past a stop (one chunk could run 64 steps);
    without it (all False), rows run on and their extra tokens are discarded: the check can fail."""
    generator = load_generator(tiny_hf_dir("llama-gqa"), batch_size=2, chunk_steps=64)
    prompts = token_prompts(seed=3)
    texts = [c.text for c in run(generator, prompts, SamplingParams(max_new_tokens=40))]
    params = SamplingParams(max_new_tokens=40, stop=ascii_stops(texts[:2]))
    stopped = run(generator, prompts, params)
    assert sum(c.finish_reason == "stop" for c in stopped) >= 2 and generator.last_stats.discarded_tokens == 0
    monkeypatch.setattr(generator, "triggers", lambda stops: np.zeros(320, bool))
    assert run(generator, prompts, params) == stopped
    assert generator.last_stats.discarded_tokens > 0


def test_every_stop_is_completed_by_a_trigger_token(generators):
    """The on-device exit table is conservative: on random token sequences, the token at which a stop
    string first occurs is always a trigger."""
    tokenizer = generators("llama-gqa").tokenizer
    stops = ("\n\nQuestion:", "ab", " 4", "</s>")
    triggers = trigger_tokens(tokenizer, stops, 320)
    assert 0 < triggers.sum() < 320
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(300):
        tokens = rng.integers(3, 320, 30).tolist()
        stopped = find_stop(tokenizer, [5], tokens, stops)
        if stopped is not None:
            found += 1
            assert triggers[tokens[stopped[0] - 1]]
    assert found > 20


def test_completion_text_keeps_the_leading_space_of_a_word_piece():
    """SentencePiece-style decoders drop a leading space at the start of a text; in context they keep it."""

    class WordPieces:
        pieces = {0: "Answer:", 1: "▁The", 2: "▁end"}

        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.pieces[i] for i in ids).replace("▁", " ").lstrip(" ")

    assert WordPieces().decode([1, 2]) == "The end"
    assert completion_text(WordPieces(), [0], [1, 2]) == " The end"


# ---- (4) EOS per row -------------------------------------------------------------------------------

def test_each_row_stops_at_its_own_eos(generators):
    free_running = run(generators("llama-gqa"), token_prompts(), SamplingParams(max_new_tokens=12, ignore_eos=True))
    eos = free_running[0].token_ids[4]  # an id the greedy continuation of prompt 0 produces at step 5
    generator = generators("llama-gqa", eos_token_ids=(eos,))
    ended = 0
    for whole, ours in zip(free_running, run(generator, token_prompts(), SamplingParams(max_new_tokens=12))):
        if eos in whole.token_ids:
            ended += 1
            cut = whole.token_ids.index(eos) + 1
            assert (ours.token_ids, ours.finish_reason) == (whole.token_ids[:cut], "eos")
            assert ours.text == generator.tokenizer.decode(whole.token_ids[:cut - 1], skip_special_tokens=True)
        else:
            assert (ours.token_ids, ours.finish_reason) == (whole.token_ids, "length")
    assert ended >= 1 and ended < len(free_running)


def test_rows_end_at_the_models_context(generators):
    generator = generators("llama-gqa", max_length=20)
    lengths = [15, 6]
    completions = run(generator, token_prompts(lengths), SamplingParams(max_new_tokens=10, ignore_eos=True))
    assert [len(c.token_ids) for c in completions] == [5, 10]
    with pytest.raises(ValueError, match="leaves no room"):
        run(generator, token_prompts([20]), SamplingParams())


# ---- (5) sampling ----------------------------------------------------------------------------------

def intended_distribution(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The distribution sampling should draw from, written independently: temperature, then keep the
    k largest, then the smallest most-likely set whose probability reaches top_p."""
    z = logits / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    keep = np.zeros(len(probs), bool)
    keep[order[: top_k or len(probs)]] = True
    probs = np.where(keep, probs, 0)
    probs /= probs.sum()
    if top_p < 1:
        mass, kept = 0.0, np.zeros(len(probs), bool)
        for i in order:
            if mass >= top_p:
                break
            kept[i] = True
            mass += probs[i]
        probs = np.where(kept, probs, 0)
        probs /= probs.sum()
    return probs


def empirical(rule: SamplingRule, logits: np.ndarray, draws: int = 40000) -> np.ndarray:
    keys = jax.random.split(jax.random.key(7), draws)
    batch = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (draws, len(logits)))
    tokens = np.asarray(jax.jit(sample_tokens, static_argnums=2)(batch, keys, rule))
    return np.bincount(tokens, minlength=len(logits)) / draws


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


PROBS = np.array([0.06, 0.4, 0.1, 0.25, 0.04, 0.15])  # sorted: 0.4, 0.25, 0.15 | 0.1, 0.06, 0.04
TV_LIMIT = 0.02  # sampling noise with 40,000 draws over 6 tokens is ~0.005


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.75),
                                                       (1.3, 4, 0.75), (0.5, 2, 0.9)])
def test_sampling_draws_from_the_intended_distribution(temperature, top_k, top_p):
    logits = np.log(PROBS)
    intended = intended_distribution(logits, temperature, top_k, top_p)
    tv = total_variation(empirical(SamplingRule(temperature, top_k, top_p), logits), intended)
    assert tv < TV_LIMIT, (tv, intended)


def test_an_off_by_one_cutoff_would_fail_the_distribution_test():
    """With p = 0.75 the nucleus is {0.4, 0.25, 0.15} (mass before the 4th is 0.8 >= 0.75); one token
    more or fewer, or a top-k of 2 or 4 instead of 3, is far outside the test's limit."""
    logits = np.log(PROBS)
    exact = intended_distribution(logits, 1.0, 0, 0.75)
    assert np.count_nonzero(exact) == 3
    for wrong in (intended_distribution(logits, 1.0, 2, 1.0), intended_distribution(logits, 1.0, 4, 1.0)):
        assert total_variation(exact, wrong) > 5 * TV_LIMIT
    assert total_variation(empirical(SamplingRule(1.0, 0, 0.75), logits), intended_distribution(logits, 1.0, 4, 1.0)) \
        > 5 * TV_LIMIT
    assert total_variation(intended_distribution(logits, 0.7, 0, 1.0), intended_distribution(logits, 1.0, 0, 1.0)) \
        > 3 * TV_LIMIT


def test_greedy_rule_takes_the_first_maximum():
    logits = jnp.asarray([[0.0, 3.0, 3.0, 1.0]])
    assert int(sample_tokens(logits, jax.random.split(jax.random.key(0), 1), SamplingRule())[0]) == 1


def test_fixed_seed_reproduces_and_does_not_depend_on_the_batch(generators):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.95, seed=11)
    prompts = token_prompts()
    first = run(generators("llama-gqa"), prompts, params)
    assert run(generators("llama-gqa"), prompts, params) == first
    # other batch sizes put the prompts in other slots and batches: same samples (per-prompt keys)
    assert run(generators("llama-gqa", batch_size=4), prompts, params) == first
    other_seed = run(generators("llama-gqa"), prompts, dataclasses.replace(params, seed=12))
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in first]


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                 dict(max_new_tokens=0), dict(stop=("",))])
def test_invalid_sampling_params_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


# ---- (6) buckets: few compiled programs ------------------------------------------------------------

def test_many_prompt_lengths_compile_one_program_per_bucket(tiny_hf_dir):
    """23 prompt lengths in 4 buckets: per bucket one prefill program for a single prompt and one
    for filling all 4 slots at once, and one decode program per attention length on the bucket
    ladder; a second run of the same shapes compiles nothing."""
    generator = load_generator(tiny_hf_dir("llama-gqa"), batch_size=4)
    lengths = list(range(1, 70, 3))
    params = SamplingParams(max_new_tokens=3)
    completions = run(generator, token_prompts(lengths), params)
    assert [c.prompt_tokens for c in completions] == lengths
    buckets = {default_bucket(n) for n in lengths}
    assert buckets == {32, 48, 64, 96}
    traced = dict(generator.programs.traces)
    assert all(count == 1 for count in traced.values())
    prefills = {key[1:] for key in traced if key[0] == "prefill"}
    assert {width for _, width in prefills} == buckets and {rows for rows, _ in prefills} <= {1, 4}
    attention_lengths = {key[-1] for key in traced if key[0] == "decode"}
    assert attention_lengths <= buckets  # the prompts' own buckets: 3 new tokens never cross one
    assert len(traced) <= 2 * len(buckets) + 1
    run(generator, token_prompts(lengths[::-1]), params)
    assert generator.programs.traces == traced


def test_bucket_ladder():
    assert [default_bucket(n) for n in (1, 32, 33, 48, 49, 64, 65, 97, 750, 1000)] == [32, 32, 48, 48, 64, 64, 96, 128,
                                                                                       768, 1024]
    assert bucket_length(10, (16, 64)) == 16
    with pytest.raises(ValueError, match="largest prompt bucket"):
        bucket_length(65, (16, 64))


# ---- (7) sharded == single device ------------------------------------------------------------------

@pytest.mark.slow
def test_sharded_generation_equals_single_device(generators, tiny_hf_dir):
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = load_generator(tiny_hf_dir("llama-gqa"), mesh=mesh, batch_size=4)
    single = generators("llama-gqa", batch_size=4)
    prompts = token_prompts([6, 13, 3, 22, 9, 17, 2])
    for params in (SamplingParams(max_new_tokens=12), SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)):
        assert run(sharded, prompts, params) == run(single, prompts, params)
    state = sharded.programs.empty_state(4, 128, 12)
    spec = state.cache.k.sharding.spec
    assert spec[1] == ("data", "fsdp") and spec[2] == "tensor"  # slots over data x fsdp, kv heads over tensor
    assert len(state.cache.k.sharding.device_set) == 8


# ---- (8) bf16 --------------------------------------------------------------------------------------

def test_bfloat16_cache_logits_roughly_agree(tiny_hf_dir):
    model32 = load_hf(tiny_hf_dir("llama-gqa"))
    model16 = load_hf(tiny_hf_dir("llama-gqa"), options=ModelOptions(dtype=jnp.bfloat16))
    ids = np.random.default_rng(2).integers(3, 320, (2, 12)).astype(np.int32)
    full = np.asarray(model32(jnp.asarray(ids)))
    logits, cache = prefill(model16, jnp.asarray(ids[:, :8]), jnp.asarray([8, 8]), cache_length=12)
    assert cache.k.dtype == jnp.bfloat16
    errors = [np.abs(np.asarray(logits) - full[:, 7]).max()]
    for position in range(8, 11):
        logits, cache = decode_step(model16, cache, jnp.asarray(ids[:, position]), jnp.asarray([position, position]))
        errors.append(np.abs(np.asarray(logits) - full[:, position]).max())
    scale = np.abs(full).max()
    assert 1e-4 * scale < max(errors) < 0.1 * scale  # bf16 rounding, not a wrong computation


@pytest.mark.slow
def test_bfloat16_generation_roughly_agrees(generators):
    prompts = token_prompts()
    ours16 = run(generators("llama-gqa", dtype="bfloat16"), prompts, SamplingParams(max_new_tokens=8))
    ours32 = run(generators("llama-gqa"), prompts, SamplingParams(max_new_tokens=8))
    assert all(c.token_ids for c in ours16)
    first_agree = sum(a.token_ids[:2] == b.token_ids[:2] for a, b in zip(ours16, ours32))
    assert first_agree >= len(prompts) - 1


# ---- loading ---------------------------------------------------------------------------------------

def test_load_generator_needs_a_fitting_tokenizer(tiny_hf_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_hf_dir("llama-gqa"), bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_generator(bare)
    from rho_jax.models.parity import build_tiny_hf_model

    small = build_tiny_hf_model(tmp_path / "small", "llama-gqa", vocab_size=256)
    with pytest.raises(ValueError, match="320 tokens but the model .* only 256"):
        load_generator(small, tokenizer=str(tiny_hf_dir("llama-gqa")))


# ---- (9) the command line ----------------------------------------------------------------------------

def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_cli_generates_and_resumes(tiny_hf_dir, tmp_path, capsys):
    from rho_jax.generate import main

    model = str(tiny_hf_dir("llama-gqa"))
    rows = [{"prompt": "Natalia sold clips", "id": "a"}, {"prompt": "How many clips", "id": "b"},
            {"prompt": "The quick brown fox", "id": "c"}]
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, rows)
    out = tmp_path / "out.jsonl"
    argv = ["--model", model, "--prompts", str(prompts), "--output", str(out), "--max-new-tokens", "6",
            "--batch-size", "2", "--stop", "\\n\\nQuestion:"]
    assert main(argv) == 0
    first = {r["prompt_index"]: r for r in read_jsonl(out)}
    assert sorted(first) == [0, 1, 2]
    generator = load_generator(model, batch_size=2)
    expected = run(generator, [r["prompt"] for r in rows], SamplingParams(max_new_tokens=6, stop=("\n\nQuestion:",)))
    for i, row in enumerate(rows):
        assert first[i] == {**row, "prompt_index": i, "completion": expected[i].text,
                            "finish_reason": expected[i].finish_reason, "prompt_tokens": expected[i].prompt_tokens,
                            "completion_tokens": len(expected[i].token_ids)}
    # an interrupted run: one row written, the next one half written
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][:10])
    assert main(argv) == 0
    assert "2 rows" in capsys.readouterr().out
    assert {r["prompt_index"]: r for r in read_jsonl(out)} == first
    assert main(argv) == 0 and "already" in capsys.readouterr().out


def test_cli_refuses_bad_input_before_loading_the_model(tiny_hf_dir, tmp_path, capsys, monkeypatch):
    import rho_jax.generate as cli

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "load_generator", no_model)
    model = str(tiny_hf_dir("llama-gqa"))
    prompts = tmp_path / "prompts.jsonl"
    base = ["--model", model, "--prompts", str(prompts), "--output", str(tmp_path / "out.jsonl")]
    cases = [
        ([], None, "prompts file .* does not exist"),
        ([], [{"prompt": "fine"}, {"text": "no prompt"}], r"prompts.jsonl, line 2: the row needs a non-empty `prompt` string"),
        ([], [{"messages": [{"role": "user", "content": "hi"}]}], "pass --chat"),
        (["--temperature", "-1"], [{"prompt": "x"}], "temperature must be a number >= 0"),
        (["--top-p", "0"], [{"prompt": "x"}], r"top_p must be a number in \(0, 1\]"),
        (["--chat"], [{"messages": [{"role": "user", "content": "hi"}]}], "no chat template"),
    ]
    for extra, rows, message in cases:
        prompts.unlink(missing_ok=True)
        if rows is not None:
            write_jsonl(prompts, rows)
        assert cli.main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and re.search(message, err), err


def test_cli_parses_stop_escapes_and_mesh():
    from rho_jax.generate import build_parser, unescape

    args = build_parser().parse_args(["--model", "m", "--prompts", "p", "--output", "o", "--stop", "\\n\\nQuestion:",
                                      "</s>", "--mesh", "1,1,-1"])
    assert [unescape(s) for s in args.stop] == ["\n\nQuestion:", "</s>"]
    assert args.mesh == MeshConfig(data=1, fsdp=1, tensor=-1)
    assert unescape("a\\\\n\\x") == "a\\n\\x"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "m", "--prompts", "p", "--output", "o", "--mesh", "2,2"])


@pytest.mark.slow
def test_generator_from_a_rho_jax_model_directory(generators, tiny_hf_dir, tmp_path):
    from rho_jax.models import save_orbax

    directory = save_orbax(load_hf(tiny_hf_dir("llama-gqa")), tmp_path / "orbax", tokenizer_from=tiny_hf_dir("llama-gqa"))
    params = SamplingParams(max_new_tokens=6)
    assert run(load_generator(directory, batch_size=2), token_prompts(), params) == \
        run(generators("llama-gqa"), token_prompts(), params)


@pytest.mark.slow
def test_generator_from_a_training_run_and_its_checkpoint(tmp_path):
    """The run's tokenizer and newest (or a given) checkpoint; greedy tokens equal a plain loop of full
    forward passes (no cache) over the same checkpoint."""
    from train_runs import run_config

    from rho_jax.data.tokenizer import load_tokenizer
    from rho_jax.train import main
    from rho_jax.training.config import ModelSource
    from rho_jax.training.model_sources import load_model

    assert main(["--config", str(run_config(tmp_path, "run"))]) == 0
    run_dir = tmp_path / "run"
    prompts = ["Natalia sold clips", "How many"]
    for path in (run_dir, run_dir / "checkpoints" / "5"):
        completions = run(load_generator(path, batch_size=2), prompts, SamplingParams(max_new_tokens=5, ignore_eos=True))
        model = load_model(ModelSource(init="checkpoint", path=str(path)), make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1]))
        tokenizer = load_tokenizer(str(run_dir / "tokenizer"))
        for prompt, completion in zip(prompts, completions):
            ids = tokenizer(prompt)["input_ids"]
            for _ in range(5):
                ids.append(int(np.argmax(np.asarray(model(jnp.asarray([ids])))[0, -1])))
            assert completion.token_ids == ids[-5:]


@pytest.mark.slow
def test_cli_chat_applies_the_chat_template(tiny_hf_dir, tmp_path):
    from transformers import AutoTokenizer

    from rho_jax.generate import main

    model = tmp_path / "chat-model"
    shutil.copytree(tiny_hf_dir("llama-gqa"), model)
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    tokenizer.save_pretrained(str(model))
    messages = [{"role": "user", "content": "How many clips?"}]
    prompts, out = tmp_path / "chat.jsonl", tmp_path / "out.jsonl"
    write_jsonl(prompts, [{"messages": messages}])
    assert main(["--model", str(model), "--prompts", str(prompts), "--output", str(out), "--chat",
                 "--max-new-tokens", "5", "--batch-size", "1"]) == 0
    ids = tokenizer("user: How many clips?\nassistant:", add_special_tokens=False)["input_ids"]
    expected = run(load_generator(model, batch_size=1), [ids], SamplingParams(max_new_tokens=5))[0]
    [row] = read_jsonl(out)
    assert (row["completion"], row["prompt_tokens"]) == (expected.text, len(ids))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_generate_like_one(tiny_hf_dir, tmp_path):
    """`python -m rho_jax.generate` on a 2-process cluster (2 CPU devices each, slots over data x fsdp)
    writes the completions of a single-process run (process 0 writes, the other only computes)."""
    import os
    import subprocess
    import sys

    from cluster_runs import ROOT, free_port

    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": text} for text in ("Natalia sold clips", "How many", "The quick brown fox",
                                                         "Selective language", "0123 + 45", "clips in May")])
    base = [sys.executable, "-m", "rho_jax.generate", "--model", str(tiny_hf_dir("llama-gqa")), "--prompts",
            str(prompts), "--max-new-tokens", "8", "--batch-size", "4", "--stop", "\\n\\n"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    cluster = ["--mesh", "2,2,1", "--coordinator_address", f"127.0.0.1:{free_port()}", "--num_processes", "2"]
    started = [subprocess.Popen(base + ["--output", str(tmp_path / "cluster.jsonl"), *cluster, "--process_id", str(i)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    try:
        outputs = [process.communicate(timeout=300)[0] for process in started]
    finally:
        for process in started:
            process.kill()
    assert all(process.returncode == 0 for process in started), outputs
    single = subprocess.run(base + ["--output", str(tmp_path / "single.jsonl")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    by_index = lambda name: {r["prompt_index"]: r for r in read_jsonl(tmp_path / name)}
    assert by_index("cluster.jsonl") == by_index("single.jsonl") and len(by_index("single.jsonl")) == 6
