"""The trainer and its plumbing (`python -m rho_jax.train`, `python -m rho_jax.score`).

config.py         the run configuration (`RunConfig`: one YAML file + `key.sub=value` overrides)
schema.py         strict YAML -> frozen dataclasses, errors naming the dotted field
preflight.py      everything refused before compiling; the run's checked inputs
trainer.py        `Trainer`: setup (restore or init, reference, jitted steps) and the training loop
checkpoint.py     orbax checkpoints: token-interval saves, retention, safe resume
run_dir.py        a run's output directory: marker, resolved config, tokenizer, files
run_log.py        metrics.jsonl, eval.jsonl, TensorBoard, progress bar
model_sources.py  models from scratch, HF directories or rho_jax checkpoints, placed on the mesh
lora_setup.py     `model.lora`: the adapter a run starts from, its graph over the frozen base, resume checks
agreement.py      the multi-process stop agreement, read one step late
cluster.py        multi-process detection (flags, JAX_* variables, SLURM, TPU VMs) and host collectives
scoring.py        offline reference scores for "score once, train many"
"""
