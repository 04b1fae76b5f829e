#!/usr/bin/env python3
"""A tiny byte-level BPE tokenizer that behaves like Qwen2 / Qwen2.5-VL's, for golden fixtures.

Same normaliser (NFC), pre-tokenizer (Qwen2's split regex, then ByteLevel without prefix space),
decoder (ByteLevel) and added tokens (same strings and order as Qwen2.5-VL, ids right after the
BPE vocab) as the real one; only the BPE vocab/merges are small (480 entries), learnt from a
fixed English + Chinese corpus that includes the Qwen-Image-Edit prompt templates.

The merges are learnt by a small deterministic BPE loop written here (ties broken by the pair's
strings) instead of tokenizers' BpeTrainer, whose tie-breaking depends on hash-map order; the
`tokenizers` library still does the normalisation / pre-tokenisation and builds tokenizer.json.

`build_tiny_qwen_tokenizer(out_dir, layout)` writes one folder:
  layout "vocab_merges":   vocab.json + merges.txt + tokenizer_config.json + added_tokens.json +
                           special_tokens_map.json (how Qwen-Image-Edit ships tokenizer/)
  layout "tokenizer_json": tokenizer.json + tokenizer_config.json + special_tokens_map.json

Run as a script to write tests/fixtures/tokenizer/{vocab_merges,tokenizer_json}/ and
tests/fixtures/tokenizer/samples.json (texts -> input_ids through transformers' AutoTokenizer
loaded from each folder; both folders must agree).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "tokenizer"

# Qwen2's pre-tokenizer regex (transformers models/qwen2/tokenization_qwen2.py).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Number of regular (BPE) tokens: 256 byte tokens + learnt merges. Added tokens follow.
BPE_VOCAB_SIZE = 480

# Qwen2.5-VL's added tokens in id order (151643.. in the real vocab), with their `special` flag.
ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
ADDITIONAL_SPECIAL_TOKENS = [t for t, special in ADDED_TOKENS[1:14] if special]

# The system prompt shared by QwenImageEditPipeline and QwenImageEditPlusPipeline (diffusers 0.42.1).
EDIT_SYSTEM_PROMPT = (
    "Describe the key features of the input image (color, shape, size, texture, objects, background), "
    "then explain how the user's text instruction should alter or modify the image. Generate a new image "
    "that meets the user's requirements while maintaining consistency with the original input where appropriate."
)
EDIT_TEMPLATE = (
    "<|im_start|>system\n" + EDIT_SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"
)
PLUS_TEMPLATE = (
    "<|im_start|>system\n" + EDIT_SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
PLUS_IMAGE_PREFIX = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"
# QwenImagePipeline (text-to-image) system prompt, so its template tokenises sensibly too.
T2I_SYSTEM_PROMPT = (
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships "
    "of the objects and background:"
)

CORPUS = [
    EDIT_TEMPLATE.format("Make the cat wear a red hat."),
    PLUS_TEMPLATE.format(PLUS_IMAGE_PREFIX.format(1) + PLUS_IMAGE_PREFIX.format(2) + "Put the dog next to the girl."),
    "<|im_start|>system\n" + T2I_SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\nA cozy cafe.<|im_end|>\n",
    "Change the background to a snowy mountain at sunset, keep the person's face unchanged.",
    "Replace the text on the sign with 'Qwen Edit is awesome', yarn art style, detailed, vibrant colors.",
    "Remove the car from the street and add two trees. The sky should be blue and bright.",
    "Turn the photo into a watercolor painting; don't change the composition. It's 2025!",
    "I'm sure we'll see they've done it: 3 cats, 12 dogs and 100 birds.",
    "把猫变成一只戴着红色帽子的小狗，背景换成雪山。",
    "将图片中的文字改为“通义千问”，保持原有的字体和颜色。",
    "让图1中的女孩站在图2的汽车旁边，天空是蓝色的，阳光明亮。",
    "把这张照片变成水彩画风格，不要改变构图和人物的表情。",
    "在桌子上放一杯咖啡和一本书，光线柔和，细节清晰。",
    "Make the girl in picture 1 hold the 红色的花 from picture 2, 风格保持一致。",
    "Add a small 中文 sign that says 欢迎光临 above the door.",
    "    indented line\n\ttab\r\nwindows line\n\n\nmultiple blank lines   and  spaces",
    "Numbers 0123456789, symbols !@#$%^&*()[]{}<>/\\|-_=+~`;:,.?",
]

SAMPLE_TEXTS = [
    "Make the cat wear a red hat.",
    "把猫变成一只戴着红色帽子的小狗。",
    "Make the girl in picture 1 hold the 红色的花 from picture 2, keep the style 一致.",
    " ",
    "",
    "Hello   world\n\n  tabs\tand\r\nCRLF  ",
    "I'M SURE THEY'LL say it's 2025 & we've 3.14 reasons",
    "Café crème (NFC: e\u0301) naïve — emoji 🐱👒 and rare 龘 chars",
    "<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>",
    "<|im_start|>user\nhi<|im_end|><|endoftext|><tool_call>x</tool_call><|fim_prefix|>",
    EDIT_TEMPLATE.format("把背景换成雪山, keep the face."),
    PLUS_TEMPLATE.format(PLUS_IMAGE_PREFIX.format(1) + PLUS_IMAGE_PREFIX.format(2) + "Put them together 放在一起."),
    PLUS_TEMPLATE.format(PLUS_IMAGE_PREFIX.format(1) + " "),
]


def _base_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _byte_alphabet() -> list[str]:
    """The 256 byte-level symbols, ordered by code point like GPT-2 / Qwen2 vocabularies ('!' = 0)."""
    return sorted(pre_tokenizers.ByteLevel.alphabet())


# The edit templates weigh this much more than the rest of the corpus, so that every word of the system
# prompt becomes one token: then the template prefix is exactly 64 tokens, as with the real vocabulary,
# and the pipelines' drop_idx = 64 drops exactly the system part.
TEMPLATE_WEIGHT = 100


def _corpus_words(tok: Tokenizer) -> Counter:
    """Byte-level pre-tokenised words of the corpus (weighted), added-token strings cut out."""
    special = re.compile("|".join(re.escape(t) for t, _ in ADDED_TOKENS))
    words: Counter = Counter()
    for i, text in enumerate(CORPUS):
        weight = TEMPLATE_WEIGHT if i < 2 else 1
        for chunk in special.split(text):
            normalised = tok.normalizer.normalize_str(chunk)
            for piece, _ in tok.pre_tokenizer.pre_tokenize_str(normalised):
                words[piece] += weight
    return words


def learn_bpe(vocab_size: int = BPE_VOCAB_SIZE) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Greedy BPE on the fixed corpus; the most frequent pair wins, ties go to the smallest pair."""
    alphabet = _byte_alphabet()
    vocab = {s: i for i, s in enumerate(alphabet)}
    words = {tuple(w): c for w, c in _corpus_words(_base_tokenizer(vocab, [])).items()}
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs: Counter = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = best[0] + best[1]
        merges.append(best)
        if merged not in vocab:
            vocab[merged] = len(vocab)
        new_words = {}
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + count
        words = new_words
    return vocab, merges


def build_tokenizer() -> Tokenizer:
    vocab, merges = learn_bpe()
    tok = _base_tokenizer(vocab, merges)
    # Added tokens take the ids right after the BPE vocab, in Qwen's order.
    for content, special in ADDED_TOKENS:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    return tok


def _added_tokens_decoder(first_id: int) -> dict[str, dict]:
    return {
        str(first_id + i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for i, (content, special) in enumerate(ADDED_TOKENS)
    }


def _tokenizer_config(first_added_id: int) -> dict:
    """Mirrors Qwen2.5-VL-7B-Instruct's tokenizer_config.json (minus the chat template)."""
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": _added_tokens_decoder(first_added_id),
        "additional_special_tokens": ADDITIONAL_SPECIAL_TOKENS,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _special_tokens_map() -> dict:
    def entry(content):
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    return {
        "additional_special_tokens": ADDITIONAL_SPECIAL_TOKENS,
        "eos_token": entry("<|im_end|>"),
        "pad_token": entry("<|endoftext|>"),
    }


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def build_tiny_qwen_tokenizer(out_dir, layout: str = "vocab_merges") -> Path:
    """Write the tiny tokenizer to `out_dir` in the given layout; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = learn_bpe()
    first_added_id = len(vocab)
    if layout == "vocab_merges":
        # Same byte layout as the published files: compact one-line vocab.json, "#version" merges header.
        (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        (out / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
        )
        _write_json(out / "added_tokens.json", {c: first_added_id + i for i, (c, _) in enumerate(ADDED_TOKENS)})
    elif layout == "tokenizer_json":
        text = build_tokenizer().to_str(pretty=True)
        (out / "tokenizer.json").write_text(text + "\n", encoding="utf-8")
    else:
        raise ValueError(f"unknown layout {layout!r}")
    _write_json(out / "tokenizer_config.json", _tokenizer_config(first_added_id))
    _write_json(out / "special_tokens_map.json", _special_tokens_map())
    return out


def encode_samples(folder: Path, texts=SAMPLE_TEXTS) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return [tok(t)["input_ids"] for t in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    import tokenizers
    import transformers

    ids_by_layout = {}
    for layout in ("vocab_merges", "tokenizer_json"):
        folder = build_tiny_qwen_tokenizer(args.out / layout, layout)
        ids_by_layout[layout] = encode_samples(folder)
    if ids_by_layout["vocab_merges"] != ids_by_layout["tokenizer_json"]:
        raise SystemExit("vocab_merges and tokenizer_json layouts tokenise differently")
    direct = build_tokenizer()
    for text, ids in zip(SAMPLE_TEXTS, ids_by_layout["vocab_merges"]):
        if direct.encode(text, add_special_tokens=False).ids != ids:
            raise SystemExit(f"tokenizers and transformers disagree on {text!r}")
        if direct.decode(ids, skip_special_tokens=False) != direct.normalizer.normalize_str(text):
            raise SystemExit(f"decode does not round-trip {text!r}")

    prefix = "<|im_start|>system\n" + EDIT_SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n"
    if len(direct.encode(prefix).ids) != 64:
        raise SystemExit("the edit template prefix must be 64 tokens (the pipelines' drop_idx)")

    samples = {
        "generator": "tools/golden/tiny_tokenizer.py",
        "versions": {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__},
        "bpe_vocab_size": BPE_VOCAB_SIZE,
        "added_tokens": {c: BPE_VOCAB_SIZE + i for i, (c, _) in enumerate(ADDED_TOKENS)},
        "samples": [{"text": t, "input_ids": ids} for t, ids in zip(SAMPLE_TEXTS, ids_by_layout["vocab_merges"])],
    }
    _write_json(args.out / "samples.json", samples)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
