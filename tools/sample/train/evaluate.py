#!/usr/bin/python3
"""Pixel statistics of generated images (the same ones the TS checker measures).

Per image (uint8 RGB, 64x64, from round((x+1)*127.5)):
  palette  = sample_palette.json colours; nearest = smallest Euclidean RGB distance.
  border   = the outer 3-pixel frame. background = most frequent nearest-palette colour of the border
             pixels; bg_rgb = per-channel median of the border pixels that voted for it.
  mask     = pixels with |rgb - bg_rgb| > 60. shape region = its largest 4-connected component.
  colour   = most frequent nearest-palette colour (background colour excluded) of the mask pixels.
  fill     = |component| / area of the component's bounding box; square >= 0.86 > circle >= 0.64 > triangle.
  interior = fraction of mask pixels in the central half (each axis) of that bounding box      (outline LoRA)
  saturation = mean over all pixels of (max - min) / max of RGB (HSV S; 0 where max = 0)          (pastel LoRA)
  bg_var   = mean over channels of the variance of the border pixels                             (stripes LoRA)

    /usr/bin/python3 tools/sample/train/evaluate.py [--work DIR] [--n 150]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data  # noqa: E402

MASK_DIST = 60.0
SQUARE_MIN, CIRCLE_MIN = 0.86, 0.64
NAMES = list(data.COLORS)
PAL = np.array([data.COLORS[n] for n in NAMES], np.float32)


def nearest(px):
    return np.argmin(((px[:, None, :] - PAL[None]) ** 2).sum(-1), axis=1)


def largest_component(mask):
    h, w = mask.shape
    lab = np.zeros((h, w), np.int32)
    best, best_n, cur = None, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if lab[y0, x0]:
            continue
        cur += 1
        stack, pts = [(y0, x0)], []
        lab[y0, x0] = cur
        while stack:
            y, x = stack.pop()
            pts.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not lab[yy, xx]:
                    lab[yy, xx] = cur
                    stack.append((yy, xx))
        if len(pts) > best_n:
            best, best_n = cur, len(pts)
    return lab == best if best else np.zeros_like(mask)


def measure(img):
    img = img.astype(np.float32)
    h, w, _ = img.shape
    frame = np.ones((h, w), bool)
    frame[3:-3, 3:-3] = False
    border = img[frame]
    votes = nearest(border)
    bg = np.bincount(votes, minlength=len(NAMES)).argmax()
    bg_rgb = np.median(border[votes == bg], axis=0)
    mask = np.sqrt(((img - bg_rgb) ** 2).sum(-1)) > MASK_DIST
    mx, mn = img.max(-1), img.min(-1)
    sat = float(np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0).mean())
    bg_var = float(border.var(axis=0).mean())
    r = {"background": NAMES[bg], "saturation": sat, "bg_var": bg_var, "color": None, "shape": None,
         "fill": 0.0, "interior": 0.0}
    if mask.sum() < 4:
        return r
    comp = largest_component(mask)
    d = np.bincount(nearest(img[mask]), minlength=len(NAMES)).astype(np.float64)
    d[bg] = -1
    r["color"] = NAMES[int(d.argmax())]
    ys, xs = np.nonzero(comp)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    fill = comp.sum() / float((y1 - y0) * (x1 - x0))
    r["fill"] = float(fill)
    r["shape"] = "square" if fill >= SQUARE_MIN else "circle" if fill >= CIRCLE_MIN else "triangle"
    qy, qx = (y1 - y0) / 4.0, (x1 - x0) / 4.0
    inner = mask[int(round(y0 + qy)):int(round(y1 - qy)), int(round(x0 + qx)):int(round(x1 - qx))]
    r["interior"] = float(inner.mean()) if inner.size else 0.0
    return r


def eval_prompts(n, seed=777):
    """Prompts for evaluation: every held-out combo, then random specs (held-out allowed); seeds >= 100000."""
    rng = np.random.default_rng(seed)
    specs = [(s, c, b, list(data.SIZES)[i % 3], list(data.POSITIONS)[i % 5]) for i, (s, c, b) in enumerate(data.HELD_OUT)]
    while len(specs) < n:
        specs.append(data.sample_spec(rng, allow_held_out=True))
    return specs, [100000 + i for i in range(n)]


def accuracy(imgs, specs):
    ms = [measure(im) for im in imgs]
    acc = lambda key, j: float(np.mean([m[key] == s[j] for m, s in zip(ms, specs)]))
    return {"color": acc("color", 1), "background": acc("background", 2), "shape": acc("shape", 0), "n": len(ms)}, ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/fuseload-sample-work")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--preview", default="/tmp/sample-preview")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--what", default="all", choices=["all", "base", "loras"])
    ap.add_argument("--lora-n", type=int, default=24)
    a = ap.parse_args()
    import torch
    import pipe as P
    torch.set_num_threads(2)
    os.makedirs(a.preview, exist_ok=True)
    p = P.Pipe(a.work)
    res = {}
    t0 = time.time()
    # sanity: the measure on the training renders themselves
    rng = np.random.default_rng(5)
    gt_specs = [data.sample_spec(rng, True) for _ in range(200)]
    gt = np.stack([data.render(*s, rng=rng) for s in gt_specs])
    res["ground_truth"] = accuracy(gt, gt_specs)[0]
    # the ceiling the VAE leaves the UNet: the same renders encoded and decoded
    with torch.no_grad():
        x = torch.from_numpy(gt).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        rec = torch.clamp(p.vae.decode(p.vae.encode(x)[0]), -1.0, 1.0)
    res["vae_reconstruction"] = accuracy(P.to_uint8(rec), gt_specs)[0]
    specs, seeds = eval_prompts(a.n)
    prompts = [data.caption(*s) for s in specs]
    for sch in ("euler", "ddim") if a.what != "loras" else ():
        imgs = P.to_uint8(p.generate(prompts, seeds, 20, sch, 5.0))
        res[sch], ms = accuracy(imgs, specs)
        held = [i for i, s in enumerate(specs) if (s[0], s[1], s[2]) in data.HELD_OUT]
        res[sch]["held_out_combo"] = accuracy(imgs[held], [specs[i] for i in held])[0]
        P.write_png(os.path.join(a.preview, f"{sch}.png"), P.grid(imgs[:48], 8))
        with open(os.path.join(a.preview, f"{sch}.txt"), "w") as f:
            f.write("\n".join(f"{i}: {pr} -> {m['color']} {m['shape']} on {m['background']} fill {m['fill']:.2f}"
                              for i, (pr, m) in enumerate(zip(prompts[:48], ms[:48]))))
    print(json.dumps(res, indent=1), f"({time.time() - t0:.0f}s)", flush=True)
    key = {"outline": "interior", "pastel": "saturation", "stripes": "bg_var"}
    lp, ls = prompts[:a.lora_n], seeds[:a.lora_n]
    res["loras"] = {}
    for name in ("outline", "pastel", "stripes") if a.what != "base" else ():
        if not os.path.exists(os.path.join(a.work, f"lora_{name}.pt")):
            continue
        row = {}
        for s in (0.0, 0.25, 0.5, 0.75, 1.0):
            imgs = P.to_uint8(p.with_lora(name, s).generate(lp, ls, 20, "euler", 5.0))
            row[str(s)] = float(np.mean([measure(im)[key[name]] for im in imgs]))
            if s in (0.5, 1.0):
                P.write_png(os.path.join(a.preview, f"lora_{name}_{s}.png"), P.grid(imgs[:16], 8))
        vals = list(row.values())
        mono = all(b < c for b, c in zip(vals, vals[1:])) if name == "stripes" else all(b > c for b, c in zip(vals, vals[1:]))
        res["loras"][name] = {"measure": key[name], "by_scale": row, "monotonic": mono}
        print(name, json.dumps(res["loras"][name]), flush=True)
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)
    print(f"evaluate: {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
