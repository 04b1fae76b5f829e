#!/usr/bin/env python3
"""Generate golden fixtures for diffusers' QwenImageTransformer2DModel (the Qwen-Image DiT).

Each case directory under tests/fixtures/dit/<case>/ holds:

  transformer/              model.save_pretrained() output (config.json + safetensors, maybe sharded)
  inputs.safetensors        forward() arguments, named like the forward's parameters
  expected.safetensors      `sample` (+ `sample_bf16` for the bf16 case) and debug intermediates
  meta.json                 img_shapes (per image, in patches), txt_seq_len, batch, dtype, notes

The model is a tiny random-init config; every parameter is re-randomised (norm gammas around 1,
everything else N(0, 0.1^2)) so that nothing is left at an identity/zero initialisation.
Expected outputs are computed by reloading the *saved* transformer with from_pretrained() (so the
fixture checks exactly what is on disk) and calling the real diffusers forward.

Usage (see README.md for the environment):
    python tools/golden/make_dit_fixtures.py [--out DIR] [--only CASE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

# must be set before diffusers is imported: force the plain torch SDPA attention backend
os.environ.setdefault("DIFFUSERS_ATTN_BACKEND", "native")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
from diffusers import QwenImageTransformer2DModel  # noqa: E402

EXPECTED_DIFFUSERS = "0.42.1"

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "dit"

BASE_CONFIG = dict(
    patch_size=2,
    in_channels=16,
    out_channels=4,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=24,
    guidance_embeds=False,
    axes_dims_rope=(4, 6, 6),
    zero_cond_t=False,
    use_additional_t_cond=False,
    use_layer3d_rope=False,
)

# Shapes are (frames, height, width) in *patches*; the first entry is the target (noisy latent),
# the rest are reference / condition images appended after it in the token sequence.
MULTI_REF_SHAPES = [(1, 4, 6), (1, 6, 4), (1, 2, 2)]

CASES = {
    "single": dict(
        seed=1001,
        img_shapes=[(1, 4, 6)],
        txt_len=7,
        valid_lens=[7],
        timesteps=[0.8731],
        notes="B=1, target 1x4x6 only (no reference image), 7 text tokens, all-ones mask "
        "(diffusers pipelines pass mask=None when all ones; identical result). f32.",
    ),
    "multi_ref": dict(
        seed=1002,
        img_shapes=MULTI_REF_SHAPES,
        txt_len=9,
        valid_lens=[6],
        timesteps=[0.6172],
        notes="B=1, target 1x4x6 + refs 1x6x4 and 1x2x2; 9 text tokens, last 3 padded (mask 0) with "
        "random (non-zero) embeddings. sample covers ALL 52 image tokens (the pipeline later slices "
        "[:, :24]). f32.",
    ),
    "zero_cond_t": dict(
        seed=1003,
        config=dict(zero_cond_t=True),
        img_shapes=MULTI_REF_SHAPES,
        txt_len=9,
        valid_lens=[6],
        timesteps=[0.6172],
        notes="Like multi_ref but zero_cond_t=True (Qwen-Image-Edit-2511 style): timestep batch is "
        "doubled to [t, 0]; target tokens use the t modulation, reference tokens the t=0 modulation; "
        "text and norm_out use t. `temb` here is [2B, D]. `modulate_index` [B, S_img] int32 saved for "
        "debugging. f32.",
    ),
    "bf16": dict(
        seed=1004,
        img_shapes=MULTI_REF_SHAPES,
        txt_len=9,
        valid_lens=[6],
        timesteps=[0.6171875],  # exactly representable in bf16
        bf16=True,
        notes="Like multi_ref but weights saved in bfloat16. Inputs (stored f32) are rounded to "
        "bf16-representable values and the timestep is bf16-exact, so casting them to bf16 is "
        "lossless. `sample` and all intermediates: bf16 weights upcast to f32, f32 math (tol ~1e-4). "
        "`sample_bf16`: the model run natively in bf16 on CPU (inputs cast to bf16), upcast to f32 "
        "losslessly for storage (tol ~2e-2).",
    ),
    "sharded": dict(
        seed=1005,
        img_shapes=MULTI_REF_SHAPES,
        txt_len=9,
        valid_lens=[6],
        timesteps=[0.6172],
        max_shard_size="100KB",
        notes="Like multi_ref but saved with max_shard_size=100KB -> several "
        "diffusion_pytorch_model-0000k-of-0000n.safetensors shards + "
        "diffusion_pytorch_model.safetensors.index.json. f32.",
    ),
    "batch2": dict(
        seed=1006,
        img_shapes=MULTI_REF_SHAPES,
        txt_len=9,
        valid_lens=[9, 6],
        timesteps=[0.9412, 0.3055],
        notes="B=2, multi_ref shapes for both elements; element 0 fully valid text (9), element 1 "
        "last 3 tokens padded; different timesteps and different random inputs per element. "
        "Each batch row equals the B=1 forward of that row. f32.",
    ),
    "additional_t_cond": dict(
        seed=1007,
        config=dict(use_additional_t_cond=True),
        img_shapes=MULTI_REF_SHAPES,
        txt_len=9,
        valid_lens=[6, 6],
        timesteps=[0.6172, 0.6172],
        additional_t_cond=[0, 1],
        notes="use_additional_t_cond=True: time_text_embed has addition_t_embedding = "
        "nn.Embedding(2, D); `additional_t_cond` is int64 [B] with values in {0,1} (the Layered "
        "pipeline passes is_rgb = zeros). B=2 with additional_t_cond=[0, 1] so both embedding rows "
        "are exercised; element inputs differ. f32.",
    ),
    "layer3d_rope": dict(
        seed=1008,
        config=dict(use_additional_t_cond=True, use_layer3d_rope=True),
        # Layered-pipeline style: (layers + 1) target-sized images, then the condition image.
        img_shapes=[(1, 4, 6), (1, 4, 6), (1, 4, 6), (1, 2, 4)],
        txt_len=9,
        valid_lens=[6],
        timesteps=[0.6172],
        additional_t_cond=[0],
        notes="EXTRA (not in the original brief): use_layer3d_rope=True + use_additional_t_cond=True "
        "(Qwen-Image-Layered style). Images 0..n-2 get frame index 0..n-2, the LAST image (condition) "
        "gets frame index -1; text offset = max(max_vid_index, n-1). f32.",
    ),
}


def randomize_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Re-randomise every parameter (in place) so no identity/zero init survives."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.dim() == 1 and name.endswith("weight"):
                # norm gammas (RMSNorm weights): around 1 but not 1
                p.copy_(1.0 + 0.1 * noise)
            elif "addition_t_embedding" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(0.1 * noise)


def bf16_round(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(torch.float32)


def make_inputs(spec: dict, cfg: dict, gen: torch.Generator) -> dict:
    batch = len(spec["timesteps"])
    s_img = sum(f * h * w for f, h, w in spec["img_shapes"])
    s_txt = spec["txt_len"]
    hs = torch.randn(batch, s_img, cfg["in_channels"], generator=gen)
    # Text-encoder hidden states can be large (Qwen2.5-VL last hidden state); use std 2 so that
    # txt_norm (RMSNorm) actually rescales.
    ehs = 2.0 * torch.randn(batch, s_txt, cfg["joint_attention_dim"], generator=gen)
    mask = torch.zeros(batch, s_txt, dtype=torch.int64)
    for b, n in enumerate(spec["valid_lens"]):
        mask[b, :n] = 1
    ts = torch.tensor(spec["timesteps"], dtype=torch.float32)
    if spec.get("bf16"):
        hs, ehs, ts = bf16_round(hs), bf16_round(ehs), bf16_round(ts)
    inputs = {
        "hidden_states": hs.contiguous(),
        "encoder_hidden_states": ehs.contiguous(),
        "encoder_hidden_states_mask": mask.contiguous(),
        "timestep": ts.contiguous(),
    }
    if "additional_t_cond" in spec:
        inputs["additional_t_cond"] = torch.tensor(spec["additional_t_cond"], dtype=torch.int64)
    return inputs


def forward(model, inputs: dict, img_shapes_batched, dtype=torch.float32, capture=False):
    """Run the real diffusers forward; optionally capture intermediates with hooks."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    if capture:

        def save(name):
            def hook(_mod, _args, out):
                captured[name] = out

            return hook

        handles.append(model.time_text_embed.register_forward_hook(save("temb")))
        handles.append(model.img_in.register_forward_hook(save("img_in")))
        handles.append(model.txt_in.register_forward_hook(save("txt_in")))
        handles.append(model.transformer_blocks[0].register_forward_hook(save("block0")))
        handles.append(model.pos_embed.register_forward_hook(save("rope")))

    kwargs = dict(
        hidden_states=inputs["hidden_states"].to(dtype),
        encoder_hidden_states=inputs["encoder_hidden_states"].to(dtype),
        encoder_hidden_states_mask=inputs["encoder_hidden_states_mask"],
        # pipelines pass timestep in the latents dtype; the model casts it to hidden dtype anyway
        timestep=inputs["timestep"].to(dtype),
        img_shapes=img_shapes_batched,
        return_dict=False,
    )
    if "additional_t_cond" in inputs:
        kwargs["additional_t_cond"] = inputs["additional_t_cond"]
    with torch.no_grad():
        out = model(**kwargs)[0]
    for h in handles:
        h.remove()

    if not capture:
        return out, {}
    txt, img = captured["block0"]  # block returns (encoder_hidden_states, hidden_states)
    vid_freqs, txt_freqs = captured["rope"]  # complex64 [S, head_dim/2]
    inter = {
        "temb": captured["temb"],
        "img_in": captured["img_in"],
        "txt_in": captured["txt_in"],
        "block0_img": img,
        "block0_txt": txt,
        "rope_img_cos": vid_freqs.real,
        "rope_img_sin": vid_freqs.imag,
        "rope_txt_cos": txt_freqs.real,
        "rope_txt_sin": txt_freqs.imag,
    }
    return out, inter


def f32c(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous().clone()


def build_case(name: str, spec: dict, out_root: Path) -> None:
    gen = torch.Generator().manual_seed(spec["seed"])
    cfg = dict(BASE_CONFIG)
    cfg.update(spec.get("config", {}))
    torch.manual_seed(spec["seed"])  # module init (overwritten by randomize_, but keep deterministic)
    model = QwenImageTransformer2DModel(**cfg).to(torch.float32).eval()
    randomize_(model, gen)
    inputs = make_inputs(spec, cfg, gen)
    batch = inputs["timestep"].shape[0]
    img_shapes_batched = [list(spec["img_shapes"])] * batch

    case_dir = out_root / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    tdir = case_dir / "transformer"
    tdir.mkdir(parents=True)

    save_kwargs = {}
    if "max_shard_size" in spec:
        save_kwargs["max_shard_size"] = spec["max_shard_size"]
    if spec.get("bf16"):
        model.to(torch.bfloat16).save_pretrained(tdir, **save_kwargs)
    else:
        model.save_pretrained(tdir, **save_kwargs)

    # Reference: reload what is on disk, upcast to f32, run in f32 with hooks.
    ref = QwenImageTransformer2DModel.from_pretrained(tdir, torch_dtype=torch.float32).eval()
    sample, inter = forward(ref, inputs, img_shapes_batched, capture=True)
    expected = {"sample": f32c(sample)}
    expected.update({k: f32c(v) for k, v in inter.items()})

    if cfg["zero_cond_t"]:
        idx = [[0] * (f * h * w) if i == 0 else [1] * (f * h * w) for i, (f, h, w) in enumerate(spec["img_shapes"])]
        flat = [x for part in idx for x in part]
        expected["modulate_index"] = torch.tensor([flat] * batch, dtype=torch.int32)

    if spec.get("bf16"):
        m16 = QwenImageTransformer2DModel.from_pretrained(tdir, torch_dtype=torch.bfloat16).eval()
        assert next(m16.parameters()).dtype == torch.bfloat16
        s16, _ = forward(m16, inputs, img_shapes_batched, dtype=torch.bfloat16)
        assert s16.dtype == torch.bfloat16
        expected["sample_bf16"] = f32c(s16)
        d = (expected["sample_bf16"] - expected["sample"]).abs().max().item()
        print(f"  [{name}] max|sample_bf16 - sample| = {d:.3e}")

    # ---- sanity checks (printed; fail loudly if the fixture would be degenerate) ----
    assert torch.isfinite(expected["sample"]).all()
    print(f"  [{name}] sample {tuple(sample.shape)} std={sample.std().item():.4f} "
          f"absmax={sample.abs().max().item():.4f}")
    # padded text tokens must not influence the image output
    mask = inputs["encoder_hidden_states_mask"]
    if (mask == 0).any():
        alt = dict(inputs)
        e = inputs["encoder_hidden_states"].clone()
        e[mask == 0] = 100.0 * torch.randn(int((mask == 0).sum()), e.shape[-1], generator=gen)
        alt["encoder_hidden_states"] = e
        s2, _ = forward(ref, alt, img_shapes_batched)
        d = (s2 - sample).abs().max().item()
        print(f"  [{name}] changing padded text embeddings changes sample by {d:.3e}")
        assert d < 1e-5, d
    if batch > 1:
        for b in range(batch):
            one = {k: v[b : b + 1] for k, v in inputs.items()}
            s1, _ = forward(ref, one, [list(spec["img_shapes"])])
            d = (s1[0] - sample[b]).abs().max().item()
            print(f"  [{name}] row {b} vs B=1 forward: max diff {d:.3e}")
            assert d < 1e-5, d
    if "additional_t_cond" in inputs:
        alt = dict(inputs)
        alt["additional_t_cond"] = 1 - inputs["additional_t_cond"]
        s2, _ = forward(ref, alt, img_shapes_batched)
        d = (s2 - sample).abs().max().item()
        print(f"  [{name}] flipping additional_t_cond changes sample by {d:.3e}")
        assert d > 1e-3, d
    if cfg["zero_cond_t"]:
        cfg2 = dict(cfg, zero_cond_t=False)
        plain = QwenImageTransformer2DModel(**cfg2).eval()
        plain.load_state_dict(ref.state_dict())
        s2, _ = forward(plain, inputs, img_shapes_batched)
        d = (s2 - sample).abs().max().item()
        print(f"  [{name}] zero_cond_t=False would change sample by {d:.3e}")
        assert d > 1e-3, d

    save_file(inputs, str(case_dir / "inputs.safetensors"), metadata={"format": "pt"})
    save_file(expected, str(case_dir / "expected.safetensors"), metadata={"format": "pt"})
    meta = {
        "img_shapes": [list(s) for s in spec["img_shapes"]],
        "txt_seq_len": spec["txt_len"],
        "batch": batch,
        "dtype": "bf16" if spec.get("bf16") else "f32",
        "notes": spec["notes"],
    }
    with open(case_dir / "meta.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")
    files = sorted(p.relative_to(case_dir).as_posix() for p in case_dir.rglob("*") if p.is_file())
    print(f"  [{name}] wrote {files}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", nargs="*", choices=sorted(CASES), help="build only these cases")
    args = ap.parse_args()

    if diffusers.__version__ != EXPECTED_DIFFUSERS:
        print(f"WARNING: diffusers {diffusers.__version__} != {EXPECTED_DIFFUSERS}; fixtures may differ",
              file=sys.stderr)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}")
    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()

    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(CASES):
        print(f"case {name}")
        build_case(name, CASES[name], args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"total fixture size under {args.out}: {total} bytes ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
