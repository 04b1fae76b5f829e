"""Synthetic rows for the `qie eval` benchmark: N pairs of SIZE x SIZE PNGs (a smooth random
ground truth, the prediction = it + noise and a shifted patch) with a background mask each, and
data.jsonl (prompt, image, back_mask) as `qie eval --dataset` and eval_reference.py read it.

    python3 benches/torch/eval_data.py --out /tmp/evalbench --rows 1000 --size 1024
"""

import argparse
import json
import os
from multiprocessing import Pool

import numpy as np
from PIL import Image

ARGS = None


def make(i: int) -> dict:
    rng = np.random.default_rng(i)
    s = ARGS.size
    small = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    gt = np.asarray(small.resize((s, s), Image.BICUBIC)).astype(np.int16)
    pred = gt + rng.integers(-12, 13, gt.shape)
    y, x = rng.integers(0, s // 2, 2)
    pred[y:y + s // 4, x:x + s // 4] = 255 - pred[y:y + s // 4, x:x + s // 4]
    mask = np.full((s, s), 255, np.uint8)
    mask[y:y + s // 4, x:x + s // 4] = 0  # the edited region is foreground
    name = f"{i:05}.png"
    Image.fromarray(gt.clip(0, 255).astype(np.uint8)).save(f"{ARGS.out}/gt/{name}", compress_level=1)
    Image.fromarray(pred.clip(0, 255).astype(np.uint8)).save(f"{ARGS.out}/pred/{name}", compress_level=1)
    Image.fromarray(mask).save(f"{ARGS.out}/mask/{name}", compress_level=1)
    return {"prompt": "make the square brighter", "image": f"gt/{name}", "back_mask": f"mask/{name}"}


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--size", type=int, default=1024)
    ARGS = p.parse_args()
    for d in ["gt", "pred", "mask"]:
        os.makedirs(f"{ARGS.out}/{d}", exist_ok=True)
    with Pool() as pool:
        rows = pool.map(make, range(ARGS.rows))
    with open(f"{ARGS.out}/data.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"wrote {ARGS.rows} rows to {ARGS.out}")


if __name__ == "__main__":
    main()
