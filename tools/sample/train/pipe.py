"""The torch text-to-image loop (independent of the TS one): tokenize, encode, CFG sampling, VAE decode."""
import copy
import os
import struct
import sys
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export  # noqa: E402
import lora as L  # noqa: E402
import sched  # noqa: E402


class Pipe:
    def __init__(self, work):
        self.tok, self.vae, self.te, self.unet, self.sf = export.load_all(work)
        self.base_te, self.base_unet = self.te, self.unet
        self.work = work

    def with_lora(self, name, scale):
        lo = torch.load(os.path.join(self.work, f"lora_{name}.pt"))
        te, unet = copy.deepcopy(self.base_te), copy.deepcopy(self.base_unet)
        L.merge_into(te, lo["te"], scale)
        L.merge_into(unet, lo["unet"], scale)
        p = copy.copy(self)
        p.te, p.unet = te, unet
        return p

    def ids(self, prompts):
        return torch.tensor([self.tok.encode(p) for p in prompts], dtype=torch.long)

    @torch.no_grad()
    def embed(self, prompts):
        return self.te(self.ids(prompts))[0]

    @staticmethod
    def init_latents(seeds):
        return torch.cat([torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    @torch.no_grad()
    def generate(self, prompts, seeds, steps=20, scheduler="euler", guidance=5.0, batch=64):
        out = []
        for i in range(0, len(prompts), batch):
            pr, sd = prompts[i:i + batch], seeds[i:i + batch]
            cond, unc = self.embed(pr), self.embed([""] * len(pr))
            x = self.init_latents(sd)
            fn = sched.sample_euler if scheduler == "euler" else sched.sample_ddim
            lat = fn(self.unet, x, unc, cond, steps, guidance)[0]
            out.append(self.decode(lat))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, lat):
        return torch.clamp(self.vae.decode(lat / self.sf), -1.0, 1.0)


def to_uint8(img):
    """[B,3,H,W] in [-1,1] -> [B,H,W,3] uint8 (round((x+1)*127.5))."""
    return np.clip(np.round((img.permute(0, 2, 3, 1).numpy() + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_png(path, rgb):
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    open(path, "wb").write(png)


def grid(imgs, cols, scale=2):
    n, h, w, _ = imgs.shape
    rows = (n + cols - 1) // cols
    g = np.full((rows * (h + 2), cols * (w + 2), 3), 128, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        g[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = imgs[i]
    return g.repeat(scale, 0).repeat(scale, 1)
