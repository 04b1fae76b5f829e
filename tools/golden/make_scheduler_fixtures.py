#!/usr/bin/env python3
"""Generate golden fixtures for FlowMatchEulerDiscreteScheduler (diffusers 0.42.1) and the Qwen
pipelines' sigma / mu / true-CFG arithmetic.

Writes tests/fixtures/scheduler/:

  schedules.json      per case: scheduler config, set_timesteps arguments (steps, custom sigmas or the
                      pipeline default, mu from calculate_shift) and the resulting sigmas (with the
                      trailing terminal sigma) and timesteps
  step.safetensors    scheduler.step() inputs and results (deterministic steps at several indices and
                      one stochastic_sampling step with its noise)
  cfg.safetensors     true CFG of the Qwen pipelines (rescaled to ||cond|| per token) and plain CFG

Usage: python tools/golden/make_scheduler_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_shift

EXPECTED_DIFFUSERS = "0.42.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "scheduler"

# scheduler/scheduler_config.json of Qwen-Image, Qwen-Image-Edit, -2509 and -2511
QWEN = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    invert_sigmas=False,
    max_image_seq_len=8192,
    max_shift=0.9,
    num_train_timesteps=1000,
    shift=1.0,
    shift_terminal=0.02,
    stochastic_sampling=False,
    time_shift_type="exponential",
    use_beta_sigmas=False,
    use_dynamic_shifting=True,
    use_exponential_sigmas=False,
    use_karras_sigmas=False,
)


def variant(**kw):
    return {**QWEN, **kw}


STATIC = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)

# (name, config, steps, sigmas: "qwen" | "layered" | list | None, image_seq_len for mu or None)
CASES = [
    ("qwen_50_1024px", QWEN, 50, "qwen", 4096),
    ("qwen_40_512px", QWEN, 40, "qwen", 1024),
    ("qwen_20_1328px", QWEN, 20, "qwen", 6889),
    ("qwen_8_768x1360", QWEN, 8, "qwen", 4080),
    ("qwen_2_steps", QWEN, 2, "qwen", 4096),  # 1 step: diffusers stretches 0/0 -> NaN
    ("qwen_custom_sigmas", QWEN, 5, [1.0, 0.8, 0.55, 0.3, 0.1], 2304),
    ("qwen_no_terminal", variant(shift_terminal=None), 30, "qwen", 4096),
    ("qwen_linear_shift", variant(time_shift_type="linear"), 30, "qwen", 4096),
    ("qwen_default_path", QWEN, 25, None, 4096),
    ("qwen_inverted", variant(invert_sigmas=True), 10, "qwen", 4096),
    ("layered_50", QWEN, 50, "layered", 4096),
    ("static_shift3_default", STATIC, 28, None, None),
    ("static_shift3_terminal", {**STATIC, "shift_terminal": 0.05}, 28, None, None),
    ("static_shift3_custom", STATIC, 6, [1.0, 0.9, 0.7, 0.5, 0.25, 0.05], None),
    ("plain_defaults", {}, 10, None, None),
]


def make_scheduler(config):
    return FlowMatchEulerDiscreteScheduler(**config)


def pipeline_sigmas(kind, steps):
    if kind == "qwen":
        return np.linspace(1.0, 1 / steps, steps)
    if kind == "layered":
        return np.linspace(1.0, 0, steps + 1)[:-1]
    return kind


def schedule_case(name, config, steps, sigmas_kind, seq_len):
    sched = make_scheduler(config)
    full = sched.config
    mu = None
    if seq_len is not None:
        mu = calculate_shift(
            seq_len,
            full.get("base_image_seq_len", 256),
            full.get("max_image_seq_len", 4096),
            full.get("base_shift", 0.5),
            full.get("max_shift", 1.15),
        )
    sigmas = pipeline_sigmas(sigmas_kind, steps)
    if sigmas is None:
        sched.set_timesteps(num_inference_steps=steps, mu=mu)
    else:
        # what retrieve_timesteps does: sigmas (and mu) only
        sched.set_timesteps(sigmas=sigmas, mu=mu)
    case = dict(
        name=name,
        config=config,
        steps=steps,
        sigmas_arg=sigmas_kind if isinstance(sigmas_kind, (str, type(None))) else "custom",
        image_seq_len=seq_len,
        mu=mu,
        sigmas=[float(x) for x in sched.sigmas.numpy()],
        timesteps=[float(x) for x in sched.timesteps.numpy()],
    )
    if isinstance(sigmas_kind, list):
        case["custom_sigmas"] = sigmas_kind
    return case


def step_fixtures(gen):
    out = {}
    sched = make_scheduler(QWEN)
    steps, mu = 10, calculate_shift(64, 256, 8192, 0.5, 0.9)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    for idx in (0, 5, 9):
        sample = torch.randn(1, 64, 16, generator=gen)
        v = torch.randn(1, 64, 16, generator=gen)
        sched.set_begin_index(idx)
        sched._step_index = None
        prev = sched.step(v, sched.timesteps[idx], sample, return_dict=False)[0]
        out[f"step{idx}_sample"] = sample
        out[f"step{idx}_model_output"] = v
        out[f"step{idx}_prev"] = prev
    # stochastic_sampling: the noise comes from the generator; regenerate it with the same seed
    sched = make_scheduler(variant(stochastic_sampling=True))
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    sched.set_begin_index(3)
    sample = torch.randn(1, 64, 16, generator=gen)
    v = torch.randn(1, 64, 16, generator=gen)
    prev = sched.step(v, sched.timesteps[3], sample, generator=torch.Generator().manual_seed(7),
                      return_dict=False)[0]
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(7))
    out.update(stoch3_sample=sample, stoch3_model_output=v, stoch3_noise=noise, stoch3_prev=prev)
    return {k: t.contiguous() for k, t in out.items()}


def cfg_fixtures(gen):
    cond = torch.randn(2, 24, 64, generator=gen)
    uncond = cond + 0.5 * torch.randn(2, 24, 64, generator=gen)
    scale = 4.0
    comb = uncond + scale * (cond - uncond)
    cond_norm = torch.norm(cond, dim=-1, keepdim=True)
    noise_norm = torch.norm(comb, dim=-1, keepdim=True)
    rescaled = comb * (cond_norm / noise_norm)
    return dict(cond=cond, uncond=uncond, true_cfg=rescaled.contiguous(), plain_cfg=comb.contiguous())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if diffusers.__version__ != EXPECTED_DIFFUSERS:
        raise SystemExit(f"expected diffusers {EXPECTED_DIFFUSERS}, found {diffusers.__version__}")
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [schedule_case(*c) for c in CASES]
    meta = dict(diffusers=diffusers.__version__, cfg_scale=4.0, cases=cases)
    (args.out / "schedules.json").write_text(json.dumps(meta, indent=1) + "\n")
    gen = torch.Generator().manual_seed(2024)
    save_file(step_fixtures(gen), str(args.out / "step.safetensors"))
    save_file(cfg_fixtures(gen), str(args.out / "cfg.safetensors"))
    print(f"wrote {len(cases)} schedules to {args.out}")


if __name__ == "__main__":
    main()
