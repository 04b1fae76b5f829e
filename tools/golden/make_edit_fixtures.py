#!/usr/bin/env python3
"""End-to-end golden fixtures for diffusers' QwenImageEditPlusPipeline and QwenImageEditPipeline.

For each case (tests/fixtures/edit/<case>/):

  model/                  pipeline.save_pretrained(): model_index.json, transformer/, vae/, text_encoder/,
                          tokenizer/ (vocab.json + merges.txt layout), processor/, scheduler/
  inputs/image_<i>.png    the input image(s)
  init_noise.safetensors  `latents` [1, S, 64]: the initial noise in diffusers' packed layout (passed as latents=)
  settings.json           everything the pipeline was called with, plus the monkeypatched resize areas
  expected.safetensors    intermediates and outputs (see README.md for the list)
  out.png                 the output image (output_type="pil")

All components are tiny random models; every parameter is re-randomised with a fixed seed. The pipeline
is reloaded from the saved model/ folder (from_pretrained) before running, so the fixture checks exactly
what is on disk. The real pipelines resize inputs to 384^2 / 1024^2 areas; here `calculate_dimensions` is
wrapped so that those areas map to small ones (recorded in settings.json), keeping the test cheap.

Usage (environment: see README.md):
    python tools/golden/make_edit_fixtures.py [--out DIR] [--only CASE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("DIFFUSERS_ATTN_BACKEND", "native")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit_module  # noqa: E402
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus_module  # noqa: E402
from transformers import (  # noqa: E402
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLProcessor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_tokenizer import ADDED_TOKENS, BPE_VOCAB_SIZE, build_tiny_qwen_tokenizer  # noqa: E402

EXPECTED_VERSIONS = {"diffusers": "0.42.1", "transformers": "5.24.0", "torch": "2.15.0"}

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "edit"

TOKEN_ID = {content: BPE_VOCAB_SIZE + i for i, (content, _) in enumerate(ADDED_TOKENS)}

# Published Qwen-Image / Qwen-Image-Edit scheduler/scheduler_config.json values.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=0.9,
    base_image_seq_len=256,
    max_image_seq_len=8192,
    invert_sigmas=False,
    shift_terminal=0.02,
    use_karras_sigmas=False,
    use_exponential_sigmas=False,
    use_beta_sigmas=False,
    time_shift_type="exponential",
    stochastic_sampling=False,
)

# Qwen2.5-VL-7B-Instruct's preprocessor_config.json values (shipped as Qwen-Image-Edit's processor/).
IMAGE_PROCESSOR_CONFIG = dict(
    min_pixels=3136,
    max_pixels=12845056,
    patch_size=14,
    temporal_patch_size=2,
    merge_size=2,
    image_mean=[0.48145466, 0.4578275, 0.40821073],
    image_std=[0.26862954, 0.26130258, 0.27577711],
)

TEXT_HIDDEN = 64


def _allow_missing_video_processor() -> None:
    """Without torchvision, transformers 5.24 cannot build Qwen2VLProcessor at all: its class check for the
    (absent, None) video_processor looks up a placeholder VIDEO_PROCESSOR_MAPPING and raises AttributeError.
    Skip the class check for None arguments only; the image path is unaffected."""
    from transformers.processing_utils import ProcessorMixin

    original = ProcessorMixin.check_argument_for_proper_class

    def check(self, argument_name, argument):
        if argument is None:
            return None
        return original(self, argument_name, argument)

    ProcessorMixin.check_argument_for_proper_class = check


_allow_missing_video_processor()

CASES = {
    "plus": dict(
        pipeline="plus",
        seed=2001,
        zero_cond_t=True,
        image_sizes=[(96, 64), (48, 96)],  # (width, height)
        vl_area=96 * 96,
        vae_area=128 * 128,
        prompt="Put the cat from Picture 1 next to the 红色的花 in Picture 2, 保持风格一致.",
        negative_prompt=" ",
    ),
    "edit": dict(
        pipeline="edit",
        seed=2002,
        zero_cond_t=False,
        image_sizes=[(72, 120)],
        area=128 * 128,
        prompt="把背景换成雪山, keep the cat's red hat.",
        negative_prompt="blurry, 模糊",
    ),
}
STEPS = 3
TRUE_CFG_SCALE = 4.0


# ----------------------------------------------------------------------------------------------
# tiny components


def text_encoder_config() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=512,
            hidden_size=TEXT_HIDDEN,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            hidden_act="silu",
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            rope_theta=1000000.0,
            bos_token_id=TOKEN_ID["<|endoftext|>"],
            eos_token_id=TOKEN_ID["<|im_end|>"],
        ),
        vision_config=dict(
            depth=3,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            in_chans=3,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            out_hidden_size=TEXT_HIDDEN,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
            hidden_act="silu",
        ),
        image_token_id=TOKEN_ID["<|image_pad|>"],
        video_token_id=TOKEN_ID["<|video_pad|>"],
        vision_start_token_id=TOKEN_ID["<|vision_start|>"],
        vision_end_token_id=TOKEN_ID["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def transformer_config(zero_cond_t: bool) -> dict:
    return dict(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
        zero_cond_t=zero_cond_t,
    )


VAE_CONFIG = dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                  temperal_downsample=[False, True, True], dropout=0.0)


@torch.no_grad()
def rerandomise(module: torch.nn.Module, gen: torch.Generator, weight_gain: float = 1.0) -> None:
    """Replace every parameter: all-ones (norm gains) -> 1 + 0.1 n; vectors -> 0.05 n;
    matrices / kernels -> n * gain / sqrt(fan_in). Iterates in state_dict order (deterministic)."""
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if torch.all(p == 1):
            p.copy_(1.0 + 0.1 * noise)
        elif p.dim() <= 1 or p[0].numel() == 1:
            p.copy_(0.05 * noise)
        else:
            fan_in = p[0].numel()
            p.copy_(noise * weight_gain / fan_in**0.5)


def build_components(case: dict, work: Path):
    gen = torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])

    transformer = QwenImageTransformer2DModel(**transformer_config(case["zero_cond_t"]))
    rerandomise(transformer, gen)
    vae = AutoencoderKLQwenImage(**VAE_CONFIG)
    rerandomise(vae, gen)
    text_encoder = Qwen2_5_VLForConditionalGeneration(text_encoder_config())
    rerandomise(text_encoder, gen)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)

    tok_dir = build_tiny_qwen_tokenizer(work / "tokenizer_src", "vocab_merges")
    tokenizer = Qwen2Tokenizer.from_pretrained(str(tok_dir))
    image_processor = transformers.Qwen2VLImageProcessorPil(**IMAGE_PROCESSOR_CONFIG)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        scheduler=scheduler,
    )


def flatten_text_encoder_config(path: Path) -> None:
    """Rewrite text_encoder/config.json in the flat layout published checkpoints use (text params at top
    level, vision_config nested); transformers accepts both, the published one is flat."""
    cfg = json.loads(path.read_text())
    text = cfg.pop("text_config")
    for key in ("model_type", "dtype", "architectures", "transformers_version", "tie_word_embeddings"):
        text.pop(key, None)
    # published: "rope_scaling": {"type": "mrope", "mrope_section": [...]}, "rope_theta" at top level
    rope = text.pop("rope_parameters")
    text["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    text["rope_theta"] = rope["rope_theta"]
    flat = {**cfg, **text}
    path.write_text(json.dumps(dict(sorted(flat.items())), indent=2) + "\n")


def write_processor(folder: Path) -> None:
    """processor/ as published (Qwen2.5-VL style): preprocessor_config.json with both the legacy
    min_pixels/max_pixels keys and `size`, plus the tokenizer files. Written by hand because
    Qwen2VLProcessor.save_pretrained fails without a video processor (no torchvision)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = IMAGE_PROCESSOR_CONFIG
    preprocessor = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": cfg["image_mean"],
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": cfg["image_std"],
        "max_pixels": cfg["max_pixels"],
        "merge_size": cfg["merge_size"],
        "min_pixels": cfg["min_pixels"],
        "patch_size": cfg["patch_size"],
        "processor_class": "Qwen2VLProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": cfg["max_pixels"], "shortest_edge": cfg["min_pixels"]},
        "temporal_patch_size": cfg["temporal_patch_size"],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    build_tiny_qwen_tokenizer(folder, "vocab_merges")


def load_processor(folder: Path) -> Qwen2VLProcessor:
    """What QwenImageEdit*Pipeline.from_pretrained would load, minus the video processor (needs torchvision):
    transformers 5.24 without torchvision resolves Qwen2VLImageProcessor to the PIL backend."""
    image_processor = transformers.AutoImageProcessor.from_pretrained(str(folder))
    tokenizer = Qwen2Tokenizer.from_pretrained(str(folder))
    return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load_pipeline(pipe_cls, model_dir: Path):
    pipe = pipe_cls.from_pretrained(
        str(model_dir), processor=load_processor(model_dir / "processor"), dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe_cls, components: dict, model_dir: Path) -> None:
    pipe = pipe_cls(**components)
    original_save = Qwen2VLProcessor.save_pretrained
    Qwen2VLProcessor.save_pretrained = lambda self, path, **kw: write_processor(Path(path))
    try:
        pipe.save_pretrained(str(model_dir), safe_serialization=True)
    finally:
        Qwen2VLProcessor.save_pretrained = original_save
    # Published checkpoints ship tokenizer/ as vocab.json + merges.txt (+ configs), no tokenizer.json.
    shutil.rmtree(model_dir / "tokenizer")
    build_tiny_qwen_tokenizer(model_dir / "tokenizer", "vocab_merges")
    flatten_text_encoder_config(model_dir / "text_encoder" / "config.json")


# ----------------------------------------------------------------------------------------------
# inputs


def make_image(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour gradients + a few blobs + mild noise: resampling filters matter, values are not flat."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width, 3))
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        img[..., c] = 0.5 + 0.35 * np.sin(2 * np.pi * (fx * x / width + fy * y / height) + ph)
    for _ in range(3):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(4, 16)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-0.4, 0.4, size=3)
    img += rng.normal(0, 0.03, size=img.shape)
    return Image.fromarray(np.clip(np.round(img * 255), 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------------
# instrumentation


class Recorder:
    def __init__(self):
        self.calls: dict[str, list] = {}

    def add(self, key, value):
        self.calls.setdefault(key, []).append(value)


def wrap(obj, name: str, rec: Recorder, key: str):
    """Replace obj.<name> by a wrapper that records (args, kwargs, result) under `key`."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        rec.add(key, (args, kwargs, result))
        return result

    setattr(obj, name, wrapper)
    return original


class ProcessorProxy:
    """Stands in for pipe.processor (a plain object's __call__ cannot be wrapped per instance)."""

    def __init__(self, processor, rec: Recorder):
        self._processor, self._rec = processor, rec

    def __call__(self, *args, **kwargs):
        out = self._processor(*args, **kwargs)
        self._rec.add("processor", (kwargs, {k: v.clone() for k, v in out.items()}))
        return out

    def __getattr__(self, item):
        return getattr(self._processor, item)


@contextmanager
def remapped_areas(module, area_map: dict[int, int]):
    """Wrap module.calculate_dimensions so the pipeline's fixed target areas map to small ones."""
    original = module.calculate_dimensions

    def patched(target_area, ratio):
        return original(area_map.get(target_area, target_area), ratio)

    module.calculate_dimensions = patched
    try:
        yield
    finally:
        module.calculate_dimensions = original


def instrument(pipe, rec: Recorder):
    image_processor = pipe.image_processor
    depth = {"preprocess": 0}
    orig_resize, orig_preprocess = image_processor.resize, image_processor.preprocess

    def resize(image, height, width, *a, **k):
        out = orig_resize(image, height, width, *a, **k)
        if depth["preprocess"] == 0:
            rec.add("condition_image", np.asarray(out).copy())
        return out

    def preprocess(image, height=None, width=None, *a, **k):
        depth["preprocess"] += 1
        try:
            out = orig_preprocess(image, height, width, *a, **k)
        finally:
            depth["preprocess"] -= 1
        rec.add("vae_image", out.clone())
        return out

    image_processor.resize, image_processor.preprocess = resize, preprocess
    object.__setattr__(pipe, "processor", ProcessorProxy(pipe.processor, rec))

    te = pipe.text_encoder
    wrap(te, "forward", rec, "text_encoder")
    te.model.visual.patch_embed.register_forward_hook(lambda m, i, o: rec.add("vision_patch_embed", o.clone()))
    te.model.visual.register_forward_hook(lambda m, i, o: rec.add("vision", o))
    te.model.language_model.register_forward_pre_hook(
        lambda m, a, k: rec.add("text_position_ids", k.get("position_ids")), with_kwargs=True
    )
    te.model.language_model.register_forward_hook(
        lambda m, i, o: rec.add("text_last_hidden", o.last_hidden_state.clone())
    )

    wrap(pipe, "_get_qwen_prompt_embeds", rec, "qwen_prompt_embeds")
    wrap(pipe, "_encode_vae_image", rec, "encode_vae_image")
    pipe.vae.encoder.register_forward_hook(lambda m, i, o: rec.add("vae_encoder_out", o.clone()))
    wrap(pipe, "prepare_latents", rec, "prepare_latents")
    wrap(pipe.transformer, "forward", rec, "transformer")
    wrap(pipe.scheduler, "step", rec, "scheduler_step")
    wrap(pipe, "_unpack_latents", rec, "unpack_latents")
    pipe.vae.decoder.register_forward_hook(lambda m, i, o: rec.add("vae_decoder_raw", o.clone()))
    wrap(pipe.vae, "decode", rec, "vae_decode")


# ----------------------------------------------------------------------------------------------
# one case


def run_case(name: str, case: dict, out_root: Path) -> None:
    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    (out / "inputs").mkdir(parents=True)
    work = out / "_work"
    pipe_cls = QwenImageEditPlusPipeline if case["pipeline"] == "plus" else QwenImageEditPipeline
    module = plus_module if case["pipeline"] == "plus" else edit_module

    components = build_components(case, work)
    save_pipeline(pipe_cls, components, out / "model")
    shutil.rmtree(work)

    pipe = load_pipeline(pipe_cls, out / "model")

    images = []
    for i, (w, h) in enumerate(case["image_sizes"]):
        img = make_image(w, h, case["seed"] * 10 + i)
        img.save(out / "inputs" / f"image_{i}.png")
        images.append(Image.open(out / "inputs" / f"image_{i}.png").convert("RGB"))

    if case["pipeline"] == "plus":
        area_map = {plus_module.CONDITION_IMAGE_SIZE: case["vl_area"], plus_module.VAE_IMAGE_SIZE: case["vae_area"]}
        out_w, out_h = plus_module.calculate_dimensions(case["vae_area"], images[-1].width / images[-1].height)
        image_arg = images
    else:
        area_map = {1024 * 1024: case["area"]}
        out_w, out_h, _ = edit_module.calculate_dimensions(case["area"], images[0].width / images[0].height)
        image_arg = images[0]

    vsf = pipe.vae_scale_factor
    seq = (out_h // vsf // 2) * (out_w // vsf // 2)
    noise_gen = torch.Generator().manual_seed(case["seed"] + 7)
    init_latents = torch.randn((1, seq, 64), generator=noise_gen, dtype=torch.float32)

    call = dict(
        image=image_arg,
        prompt=case["prompt"],
        negative_prompt=case["negative_prompt"],
        num_inference_steps=STEPS,
        true_cfg_scale=TRUE_CFG_SCALE,
        latents=init_latents.clone(),
    )
    results = {}
    recs = {}
    with remapped_areas(module, area_map), torch.no_grad():
        for output_type in ("np", "pil"):
            rec = Recorder()
            instrument(pipe, rec)
            results[output_type] = pipe(**call, output_type=output_type).images
            rec.add("schedule", (pipe.scheduler.timesteps.clone(), pipe.scheduler.sigmas.clone()))
            recs[output_type] = rec
            image_processor_class = type(pipe.processor.image_processor).__name__
            # a fresh pipeline for the next run (the wrappers stay on this one)
            pipe = load_pipeline(pipe_cls, out / "model")
    rec = recs["np"]
    mrope = text_encoder_with_mrope(pipe, rec)
    image_np = results["np"][0].astype(np.float32)
    image_pil = results["pil"][0]
    image_u8 = np.asarray(image_pil)
    assert image_u8.shape == (out_h, out_w, 3), image_u8.shape
    assert np.array_equal(image_u8, (image_np * 255).round().astype(np.uint8))
    image_pil.save(out / "out.png")

    tensors, meta = collect(rec, case, image_np, image_u8)
    tensors.update(mrope)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file({"latents": init_latents.contiguous()}, str(out / "init_noise.safetensors"))
    save_file(
        dict(sorted(tensors.items())),
        str(out / "expected.safetensors"),
        metadata={"generator": "make_edit_fixtures.py"},
    )

    settings = dict(
        pipeline=pipe_cls.__name__,
        prompt=case["prompt"],
        negative_prompt=case["negative_prompt"],
        num_inference_steps=STEPS,
        true_cfg_scale=TRUE_CFG_SCALE,
        guidance_scale=None,
        seed=case["seed"],
        noise_seed=case["seed"] + 7,
        height=out_h,
        width=out_w,
        height_width_passed=False,
        input_images=[f"inputs/image_{i}.png" for i in range(len(images))],
        input_sizes_wh=[list(s) for s in case["image_sizes"]],
        max_sequence_length=512,
        num_images_per_prompt=1,
        output_type=["np", "pil"],
        **({"vl_area": case["vl_area"], "vae_area": case["vae_area"], "output_area": case["vae_area"]}
           if case["pipeline"] == "plus" else {"area": case["area"]}),
        monkeypatch=(
            f"{module.__name__}.calculate_dimensions(area, ratio) is wrapped to call the original with "
            f"area_map.get(area, area); area_map = {{{', '.join(f'{k}: {v}' for k, v in area_map.items())}}}"
        ),
        versions=dict(
            diffusers=diffusers.__version__,
            transformers=transformers.__version__,
            torch=torch.__version__,
            numpy=np.__version__,
            pillow=Image.__version__,
        ),
        image_processor_class=image_processor_class,
        **meta,
    )
    (out / "settings.json").write_text(json.dumps(settings, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


@torch.no_grad()
def text_encoder_with_mrope(pipe, rec: Recorder) -> dict[str, torch.Tensor]:
    """The text encoder as transformers 4.x ran it inside these pipelines (and as Qwen2.5-VL is meant to
    run): 3D mRoPE positions for the image tokens. diffusers 0.42.1 drops the processor's mm_token_type_ids,
    so with transformers 5.24 the pipeline itself uses 1D positions (the `*_text_hidden` tensors)."""
    out = {}
    te = pipe.text_encoder
    for prefix, (_, inputs) in zip(("pos", "neg"), rec.calls["processor"]):
        position_ids, _ = te.model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
        )
        te.model.rope_deltas = None
        result = te(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            output_hidden_states=True,
        )
        te.model.rope_deltas = None
        hidden = result.hidden_states[-1]
        out[f"{prefix}_text_position_ids_mrope"] = position_ids.to(torch.int64).contiguous()
        out[f"{prefix}_text_hidden_mrope"] = hidden.float().contiguous().clone()
        out[f"{prefix}_prompt_embeds_mrope"] = hidden[:, 64:].float().contiguous().clone()
    return out


def collect(rec: Recorder, case: dict, image_np, image_u8):
    t: dict[str, torch.Tensor] = {}
    meta: dict = {}
    f32 = lambda x: torch.as_tensor(x).detach().to(torch.float32).contiguous().clone()  # noqa: E731

    # image preprocessing
    for i, img in enumerate(rec.calls["condition_image"]):
        t[f"condition_image_{i}"] = torch.from_numpy(np.ascontiguousarray(img))
    n_images = len(case["image_sizes"])
    vae_images = rec.calls["vae_image"][:n_images]
    for i, img in enumerate(vae_images):
        # preprocess() = PIL lanczos resize -> u8 / 255 (f32) -> 2x - 1; only the uint8 image is stored
        u8 = ((img[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        rebuilt = 2.0 * (u8.permute(2, 0, 1).float() / 255.0) - 1.0
        assert torch.equal(rebuilt, img[0].float()), "vae image is not u8/255*2-1"
        t[f"vae_image_{i}"] = u8

    # processor outputs: call 0 = positive prompt, call 1 = negative prompt
    (pos_kwargs, pos), (neg_kwargs, neg) = rec.calls["processor"]
    meta["processor_text_pos"] = pos_kwargs["text"]
    meta["processor_text_neg"] = neg_kwargs["text"]
    for prefix, outs in (("pos", pos), ("neg", neg)):
        t[f"{prefix}_input_ids"] = outs["input_ids"].to(torch.int64)
        t[f"{prefix}_attention_mask"] = outs["attention_mask"].to(torch.int64)
    assert torch.equal(pos["pixel_values"], neg["pixel_values"])
    t["pixel_values"] = f32(pos["pixel_values"])
    t["image_grid_thw"] = pos["image_grid_thw"].to(torch.int64)
    # the processor's own resize (smart_resize to multiples of 28, PIL bicubic on uint8)
    for i, (img, thw) in enumerate(zip(rec.calls["condition_image"], pos["image_grid_thw"].tolist())):
        h, w = thw[1] * 14, thw[2] * 14
        resized = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC))
        t[f"vl_resized_{i}"] = torch.from_numpy(np.array(resized))

    # vision tower (same images for both prompts)
    # (get_image_features later splits pooler_output per image in place, hence the cat)
    v_pos, v_neg = (torch.cat(list(v.pooler_output)) if isinstance(v.pooler_output, tuple) else v.pooler_output
                    for v in rec.calls["vision"])
    assert torch.equal(v_pos, v_neg)
    t["vision_patch_embed"] = f32(rec.calls["vision_patch_embed"][0])
    t["vision_embeds"] = f32(v_pos)
    # text model
    for prefix, idx in (("pos", 0), ("neg", 1)):
        args, kwargs, outputs = rec.calls["text_encoder"][idx]
        last = outputs.hidden_states[-1]
        assert torch.equal(last, rec.calls["text_last_hidden"][idx])
        t[f"{prefix}_text_hidden"] = f32(last)
        position_ids = rec.calls["text_position_ids"][idx]
        # diffusers does not pass mm_token_type_ids, so transformers 5.24 cannot build the 3D mRoPE
        # positions and the language model falls back to arange(S) on all three axes.
        meta[f"{prefix}_text_position_ids_passed"] = position_ids is not None
        if position_ids is None:
            seq_len = last.shape[1]
            position_ids = torch.arange(seq_len).view(1, 1, -1).expand(3, 1, -1)
        t[f"{prefix}_text_position_ids"] = position_ids.to(torch.int64)
        _, _, (emb, mask) = rec.calls["qwen_prompt_embeds"][idx]
        t[f"{prefix}_prompt_embeds"] = f32(emb)
        t[f"{prefix}_prompt_embeds_mask"] = mask.to(torch.int64)
        assert emb.shape[1] == int(t[f"{prefix}_attention_mask"].sum()) - 64
    meta["drop_idx"] = 64

    # VAE encode of the condition images
    enc = rec.calls["encode_vae_image"]
    for i, (_, _, lat) in enumerate(enc):
        t[f"image_latents_{i}"] = f32(lat)  # [1, 16, 1, h, w], normalised
        t[f"vae_encoder_out_{i}"] = f32(rec.calls["vae_encoder_out"][i])  # before quant_conv
    (_, _, (latents, image_latents)), = rec.calls["prepare_latents"]
    t["image_latents_packed"] = f32(image_latents)

    # transformer calls: step-major, cond then uncond
    calls = rec.calls["transformer"]
    assert len(calls) == 2 * STEPS
    _, kw0, out0 = calls[0]
    _, kw1, out1 = calls[1]
    meta["img_shapes"] = [list(map(list, s)) for s in kw0["img_shapes"]]
    meta["prompt_embeds_mask_passed"] = [kw0["encoder_hidden_states_mask"] is not None,
                                         kw1["encoder_hidden_states_mask"] is not None]
    t["step0_hidden_states"] = f32(kw0["hidden_states"])
    t["step0_timestep"] = f32(kw0["timestep"])
    t["step0_noise_pred_cond_full"] = f32(out0[0])
    s = latents.shape[1]
    t["step0_noise_pred_cond"] = f32(out0[0][:, :s])
    t["step0_noise_pred_uncond"] = f32(out1[0][:, :s])
    steps = rec.calls["scheduler_step"]
    t["step0_noise_pred"] = f32(steps[0][0][0])
    t["noise_pred_per_step"] = torch.stack([f32(a[0]) for a, _, _ in steps])
    t["latents_per_step"] = torch.stack([f32(r[0]) for _, _, r in steps])
    t["timesteps_per_call"] = torch.stack([f32(c[1]["timestep"]) for c in calls[::2]]).flatten()

    # scheduler schedule after set_timesteps (sigmas has the trailing 0) and the dynamic-shift mu
    (timesteps, sigmas), = rec.calls["schedule"]
    t["timesteps"] = f32(timesteps)
    t["sigmas"] = f32(sigmas)
    cfg = SCHEDULER_CONFIG
    meta["image_seq_len"] = s
    meta["mu"] = plus_module.calculate_shift(s, cfg["base_image_seq_len"], cfg["max_image_seq_len"],
                                             cfg["base_shift"], cfg["max_shift"])
    (args, _, _), = rec.calls["unpack_latents"]
    t["final_latents_packed"] = f32(args[0])
    (dargs, _, dres), = rec.calls["vae_decode"]
    t["decoder_input_latents"] = f32(dargs[0])  # de-normalised, [1, 16, 1, h, w]
    t["decoded"] = f32(dres[0])  # [1, 3, 1, H, W], clamped to [-1, 1]
    raw = rec.calls["vae_decoder_raw"][0]
    assert torch.equal(raw.clamp(-1, 1), dres[0]), "decode is not clamp(decoder(...))"
    meta["decoded_fraction_clamped"] = float((raw.abs() > 1).float().mean())
    # output_type="np" is exactly (decoded * 0.5 + 0.5).clamp(0, 1) as HWC f32: not stored separately
    rebuilt_np = (dres[0][0, :, 0] * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).float().numpy()
    assert np.array_equal(rebuilt_np, image_np), "np output is not (decoded/2+0.5).clamp(0,1)"
    t["image_uint8"] = torch.from_numpy(np.array(image_u8))
    return t, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", nargs="*", choices=sorted(CASES))
    args = parser.parse_args()
    for lib, want in (("diffusers", diffusers.__version__), ("transformers", transformers.__version__),
                      ("torch", torch.__version__.split("+")[0])):
        if want != EXPECTED_VERSIONS[lib]:
            print(f"warning: {lib} {want} != {EXPECTED_VERSIONS[lib]} used for the committed fixtures", file=sys.stderr)
    torch.set_num_threads(1)
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in args.only or CASES:
        run_case(name, CASES[name], args.out)
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
