"""Training LoRA adapters with the rho_jax trainer (`model.lora`): only the adapters change and are
checkpointed, their gradient is the chain rule through the merged weights, resume is exact, a run
exports to PEFT with PeftModel's logits (fresh adapters and a peft-made adapter trained further),
SLM selects with the adapted model, and bad settings are refused before any training."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from train_runs import TINY, losses, run_config

from rho_jax.convert import main as convert
from rho_jax.models import Llama, ModelConfig, ModelOptions, load_hf
from rho_jax.models.lora import ADAPTER_PARAMS, LoraAdapter, LoraSpec, adapter_params, init_lora, merge_lora, with_lora
from rho_jax.models.params import abstract_model
from rho_jax.models.parity import PARITY_TOLERANCE, random_token_ids
from rho_jax.slm import SLMConfig
from rho_jax.step import TrainState, build_train_step
from rho_jax.train import Trainer, main
from rho_jax.training.config import load_config
from rho_jax.training.model_sources import run_adapter
from rho_jax.training.run_dir import read_jsonl

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}


def _peft_helpers():
    """(make_peft_adapter, peft_logits) of tests/test_lora.py; skips without peft and torch (test extras)."""
    pytest.importorskip("torch")
    pytest.importorskip("peft", reason="peft is the reference for LoRA parity (test extra)")
    from test_lora import make_peft_adapter, peft_logits

    return make_peft_adapter, peft_logits


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _merged_loss(model: Llama, spec: LoraSpec, weights: dict, batch: dict) -> jax.Array:
    """Mean cross-entropy over valid targets of `model` with every adapted kernel W0 + s * a @ b (an
    independent merge: einsum per layer, then the plain model's logits)."""
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    for name, pair in weights.items():
        block, proj = name.split(".")
        path = ("layers", block, proj, "kernel")
        w0 = flat[path][...]
        a, b = pair["lora_a"], pair["lora_b"]
        delta = jnp.einsum("lir,lro->lio", a.reshape(a.shape[0], -1, a.shape[-1]), b.reshape(b.shape[0], b.shape[1], -1),
                           precision="highest")
        scale = jnp.asarray(spec.scales(name))[:, None, None]
        flat[path] = flat[path].replace(w0 + (scale * delta).reshape(w0.shape))
    logits = nnx.merge(graphdef, nnx.from_flat_state(flat))(batch["input_ids"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["targets"])
    return (ce * batch["valid"]).sum() / batch["valid"].sum()


def test_adapter_gradient_is_the_chain_rule_through_the_merged_weights():
    """One train step with SGD(lr=1) moves the adapters by exactly minus the gradient: it equals
    jax.grad of the merged model's loss with respect to (A, B), to 1e-5 in float32."""
    cfg = ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    base_graphdef, _ = abstract_model(cfg, ModelOptions())
    base = nnx.merge(base_graphdef, jax.jit(lambda: nnx.state(Llama(cfg, rngs=nnx.Rngs(0))))())
    spec = LoraSpec.uniform(cfg, r=3, alpha=5, target_modules=["q_proj", "o_proj", "up_proj"], use_rslora=True)
    rng = np.random.default_rng(1)
    shapes = jax.eval_shape(lambda: init_lora(cfg, spec).weights)
    adapter = LoraAdapter(spec, jax.tree.map(lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), jnp.float32), shapes))
    ids = jnp.asarray(random_token_ids(128, batch=4, seq_len=16, seed=3))
    valid = jnp.ones(ids.shape, bool).at[:, :5].set(False)  # e.g. masked prompt tokens
    batch = {"input_ids": ids, "targets": jnp.roll(ids, -1, axis=1), "valid": valid}

    graphdef, state = nnx.split(with_lora(base, adapter))
    trainable, frozen = nnx.split_state(state, ADAPTER_PARAMS, ...)
    optimizer = optax.sgd(1.0)
    step = build_train_step(graphdef, None, SLMConfig(ratio=1.0), optimizer, optax.constant_schedule(1.0),
                            accumulation_steps=2)
    before = TrainState(jnp.zeros((), jnp.int32), trainable, optimizer.init(trainable), frozen)
    after, metrics = jax.jit(step)(before, batch, None)
    step_grads = jax.tree.map(lambda old, new: old - new, nnx.to_pure_dict(trainable), nnx.to_pure_dict(after.params))

    loss, grads = jax.jit(jax.value_and_grad(lambda w: _merged_loss(base, spec, w, batch)))(adapter.weights)
    np.testing.assert_allclose(float(metrics["loss_all"]), float(loss), rtol=1e-6)
    expected = adapter_params(LoraAdapter(spec, grads))
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(expected)) > 1e-3  # a real gradient
    for name, got, want in zip(jax.tree_util.tree_flatten_with_path(expected)[0], jax.tree.leaves(step_grads),
                               jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, err_msg=str(name[0]))
    for old, new in zip(jax.tree.leaves(frozen), jax.tree.leaves(after.frozen), strict=True):
        np.testing.assert_array_equal(np.asarray(old), np.asarray(new))


@pytest.mark.slow
def test_lora_run_trains_only_adapters_and_resumes_exactly(tmp_path, capsys):
    """A LoRA run (bf16 base, dropout, accumulation, adapters sharded over fsdp x tensor): the base stays
    bit-identical, every adapter moves, the optimizer state is the adapters' size (Adam: two moments),
    a checkpoint is far smaller than the base; resumed from its step-3 checkpoint (saves at 3 and 4)
    it logs the same losses and ends with the same adapters as the uninterrupted run; resuming with
    another adapter spec is refused."""
    config = run_config(tmp_path, "run", model={"lora": {**LORA, "dropout": 0.2}, "options": {"param_dtype": "bfloat16"}},
                        train={"batch_size": 8, "total_steps": 4, "accumulation_steps": 2}, mesh={"fsdp": 4, "tensor": 2},
                        eval={"sets": {}})
    trainer = Trainer.setup(load_config(config))
    dtypes = lambda tree: {x.dtype.name for x in jax.tree.leaves(tree) if x.ndim > 1}  # noqa: E731
    assert dtypes(trainer.state.frozen) == {"bfloat16"} and dtypes(trainer.state.params) == {"float32"}
    frozen_before, adapters_before = _leaves(trainer.state.frozen), _leaves(trainer.state.params)
    assert trainer.run() == 0
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(trainer.state.frozen), frozen_before, strict=True))
    adapters_after = _leaves(trainer.state.params)
    assert all(a.shape == b.shape for a, b in zip(adapters_after, adapters_before, strict=True))
    assert all(not np.array_equal(a, b) for a, b in zip(adapters_after, adapters_before))  # lora_a and lora_b all moved
    adapter_size = sum(a.size for a in adapters_after)
    moments = [x for x in jax.tree.leaves(trainer.state.opt_state) if x.ndim > 0]
    assert sum(x.size for x in moments) == 2 * adapter_size
    base_size = sum(x.size for x in frozen_before)
    assert base_size > 20 * adapter_size
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "4"
    assert _bytes(checkpoint) < 2 * base_size  # the base alone is 2 * base_size bytes (bfloat16)
    assert _bytes(checkpoint / "params") < 4 * adapter_size + 64_000  # the adapters plus orbax's metadata
    saved = run_adapter(run)
    assert set(saved.spec.targets) == {"self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"}
    for saved_leaf, trained in zip(_leaves(adapter_params(saved)), adapters_after, strict=True):
        np.testing.assert_array_equal(saved_leaf, trained)

    interrupted = tmp_path / "interrupted"
    shutil.copytree(run, interrupted)
    (interrupted / "done.json").unlink()
    shutil.rmtree(interrupted / "checkpoints" / "4")
    (interrupted / "checkpoint_manifests" / "4.json").unlink()
    records = read_jsonl(interrupted / "metrics.jsonl")[:3]
    (interrupted / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["--config", str(config), f"output_dir={interrupted}"]) == 0
    assert [r["step"] for r in read_jsonl(interrupted / "metrics.jsonl")] == list(range(1, 5))
    assert losses(interrupted) == losses(run)
    for a, b in zip(_leaves(adapter_params(run_adapter(interrupted))), adapters_after, strict=True):
        np.testing.assert_array_equal(a, b)

    spec = json.loads((run / "lora_spec.json").read_text())  # as if the checkpoints held another adapter
    spec["targets"]["self_attn.q_proj"]["alphas"] = [16.0, 16.0]
    (run / "lora_spec.json").write_text(json.dumps(spec))
    assert main(["--config", str(config)]) == 2
    assert "resuming would mix two adapters" in capsys.readouterr().err


def _sft_data(tmp: Path) -> str:
    """Prompt/response records (the SFT format: only response tokens are targets)."""
    texts = [json.loads(line)["text"] for line in (TINY / "clean.jsonl").read_text().splitlines()[:40]]
    path = tmp / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": t[:40], "response": t[40:200]}) + "\n" for t in texts))
    return str(path)


def _hf_run(tmp: Path, base_dir: Path, name: str, lora: dict, steps: int, **sections) -> Path:
    """A LoRA run on the tiny HF model in `base_dir` (its tokenizer), 8 x 32 tokens per step."""
    sections = {"data": {"tokenizer": str(base_dir), "seq_len": 32,
                         "sources": [{"name": "sft", "paths": [_sft_data(tmp)], "prompt_field": "prompt",
                                      "text_field": "response"}]},
                "eval": {"every_tokens": None, "sets": {"heldout": {"paths": [str(TINY / "heldout.jsonl")]}}},
                **sections}
    sections.setdefault("optimizer", {"learning_rate": 3e-2, "warmup_steps": 0, "weight_decay": 0.0})
    config = run_config(tmp, name, model={"init": "hf", "path": str(base_dir), "config": None, "lora": lora},
                        train={"batch_size": 8, "total_steps": steps}, **sections)
    assert main(["--config", str(config)]) == 0
    return tmp / name


@pytest.mark.slow
def test_sft_lora_run_exports_to_peft_and_merges(tiny_hf_dir, tmp_path):
    """SFT (prompt masking) with fresh adapters on an HF base: held-out loss and task generation during
    training use the adapters; `convert to-peft RUN` loads in PeftModel with rho_jax's logits (merged
    and unmerged); `to-hf RUN` and `merge RUN BASE` give the merged model."""
    _, peft_logits = _peft_helpers()
    from test_train_tasks import _task_files

    base_dir = tiny_hf_dir("llama-gqa")
    tasks = _task_files(tmp_path)
    run = _hf_run(tmp_path, base_dir, "run", {**LORA, "rslora": True}, steps=3,
                  eval={**tasks, "every_tokens": None, "sets": {"heldout": {"paths": [str(TINY / "heldout.jsonl")]}}})
    # Step 0 is the base (B = 0), which stays frozen: what changes by the end comes from the adapters.
    evals = [r for r in read_jsonl(run / "eval.jsonl") if r.get("set") == "heldout"]
    assert [r["step"] for r in evals] == [0, 3] and evals[-1]["loss"] < evals[0]["loss"] - 0.05
    samples = run / "eval_samples" / "toy"
    first, final = ([json.loads(line)["code"] for line in (samples / f"step_{s}.jsonl").open()] for s in (0, 3))
    assert len(first) == len(final) == 3 and first != final
    assert convert(["to-peft", str(run), str(tmp_path / "peft")]) == 0
    ids = random_token_ids(320, batch=2, seq_len=24, seed=4)
    base = load_hf(base_dir)
    adapter = run_adapter(run)
    ours = np.asarray(merge_lora(base, adapter)(ids))
    assert float(np.abs(ours - np.asarray(base(ids))).max()) > 100 * PARITY_TOLERANCE  # training moved the logits
    np.testing.assert_allclose(peft_logits(base_dir, tmp_path / "peft", ids), ours, atol=PARITY_TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.asarray(with_lora(base, adapter)(ids)), ours, atol=PARITY_TOLERANCE, rtol=0)
    assert convert(["to-hf", str(run), str(tmp_path / "hf")]) == 0
    assert convert(["merge", str(run), str(base_dir), str(tmp_path / "merged")]) == 0
    for out in ("hf", "merged"):
        np.testing.assert_allclose(np.asarray(load_hf(tmp_path / out)(ids)), ours, atol=PARITY_TOLERANCE, rtol=0)


@pytest.mark.slow
def test_peft_adapter_trained_further_with_slm_round_trips(tiny_hf_dir, tmp_path):
    """A peft-made adapter (rank and alpha patterns) as model.lora.init, trained with SLM against the
    base as reference: the selection keeps the ratio of tokens by the adapted model's excess loss,
    training moves the adapter, and the export loads in PeftModel with rho_jax's logits and patterns."""
    make_peft_adapter, peft_logits = _peft_helpers()
    base_dir = tiny_hf_dir("llama-gqa")
    made = make_peft_adapter(base_dir, tmp_path / "made", seed=1, r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"],
                             rank_pattern={"up_proj": 2}, alpha_pattern={"model.layers.1.self_attn.q_proj": 3})
    run = _hf_run(tmp_path, base_dir, "run", {"init": str(made)}, steps=2,
                  optimizer={"learning_rate": 1e-2, "warmup_steps": 0, "weight_decay": 0.0},
                  reference={"init": "hf", "path": str(base_dir)}, slm={"ratio": 0.6}, eval={"sets": {}})
    records = read_jsonl(run / "metrics.jsonl")
    assert all(abs(r["selected_fraction"] - 0.6) < 0.05 for r in records)
    # The peft adapter moves the model away from the reference, so the excess loss is not zero.
    assert all(r["loss_selected"] != r["loss_all"] and r["excess_loss"] != 0 for r in records)
    ids = random_token_ids(320, batch=2, seq_len=24, seed=5)
    assert convert(["to-peft", str(run), str(tmp_path / "exported")]) == 0
    config = json.loads((tmp_path / "exported" / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {"up_proj": 2} and config["alpha_pattern"] == {"model.layers.1.self_attn.q_proj": 3}
    ours = np.asarray(merge_lora(load_hf(base_dir), run_adapter(run))(ids))
    assert float(np.abs(ours - peft_logits(base_dir, made, ids)).max()) > 10 * PARITY_TOLERANCE  # trained further
    np.testing.assert_allclose(peft_logits(base_dir, tmp_path / "exported", ids), ours, atol=PARITY_TOLERANCE, rtol=0)


@pytest.mark.parametrize("lora, message", [
    ({"r": 0}, "model.lora: r must be >= 1, got 0"),
    ({"alpha": 0}, "model.lora: alpha must be > 0"),
    ({"dropout": 1.0}, "model.lora: dropout must be in [0, 1)"),
    ({"target_modules": ["c_attn", "q_proj"]}, "target_modules ['c_attn'] match no projection of a Llama/Mistral layer; "
                                               "available: q_proj, k_proj"),
    ({"init": "/some/adapter", "r": 8}, "fixes r; remove it"),
    ({"rank": 8}, "model.lora.rank: unknown key. Allowed keys: alpha, dropout, init, r, rslora, target_modules"),
])
def test_bad_lora_settings_are_refused(tmp_path, capsys, lora, message):
    config = run_config(tmp_path, "run", model={"lora": lora})
    assert main(["--config", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_init_adapter_for_another_model_is_refused(tiny_hf_dir, tmp_path, capsys):
    make_peft_adapter, _ = _peft_helpers()
    mistral = tiny_hf_dir("mistral-sliding-window")
    adapter = make_peft_adapter(mistral, tmp_path / "adapter", r=2, target_modules=["v_proj"])
    for init, message in ((adapter, "model.lora.init: .*missing tensor .*layers\\.2\\.self_attn\\.v_proj"),
                          (tmp_path, "model.lora.init: .* is not a LoRA adapter")):
        config = run_config(tmp_path, "run", model={"init": "hf", "path": str(tiny_hf_dir("llama-gqa")), "config": None,
                                                    "lora": {"init": str(init)}},
                            data={"tokenizer": str(tiny_hf_dir("llama-gqa"))})
        assert main(["--config", str(config)]) == 2
        assert re.search(message, capsys.readouterr().err)
        assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_reference_cannot_carry_lora(tmp_path, capsys):
    config = run_config(tmp_path, "run", reference={"init": "hf", "path": str(tmp_path), "lora": {"r": 2}})
    assert main(["--config", str(config)]) == 2
    assert "reference.lora: the reference is never trained" in capsys.readouterr().err
