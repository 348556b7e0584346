#!/usr/bin/python3
"""Train the fuseload sample pipeline (VAE, text encoder + UNet, three LoRAs) on CPU, then export it.

    /usr/bin/python3 tools/sample/train/train.py --out tools/sample/pipeline

Phases are checkpointed in --work (default /tmp/fuseload-sample-work) and skipped when their
checkpoint exists, so a failed later phase can be rerun without retraining (--fresh retrains).
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data  # noqa: E402
import lora as L  # noqa: E402
import models  # noqa: E402
import sched  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

SEED = 1234
N_BASE = 10000
N_STYLE = 1500
VAE_STEPS, VAE_BATCH = 800, 32
DEC_STEPS, DEC_BATCH = 1200, 32  # decoder-only fine-tune on the fixed latents (as SD's ft-MSE decoder)
UNET_BATCH = 64
# text encoder + UNet runs, each resumed from the one before (as SD's later training stages resume
# the earlier ones), each a warm-up then a cosine to 0.1x: (steps, peak lr, warm-up steps). The loss
# still falls at the end of each cosine; a restart at a lower peak converges further than one
# longer cosine in the same steps. unet_stage<k>.pt after each; base.pt is the last.
UNET_RUNS = [(1400, 1e-3, 100), (1300, 3e-4, 50), (1500, 2e-4, 50)]
LORA_BATCH = 32
CAPTION_DROPOUT = 0.1
LORAS = {  # name -> (file format, rank, alpha)
    "outline": ("kohya", 8, 4.0),
    "pastel": ("peft", 8, 8.0),
    "stripes": ("diffusers", 8, 8.0),
}
# name -> (steps, peak lr); outline's alpha/rank = 0.5 halves its update, hence the higher lr
LORA_TRAIN = {"outline": (150, 1.2e-2), "pastel": (150, 6e-3), "stripes": (75, 6e-3)}
# UNet ResNet convs too (LoCon), or its attention and feed-forward only: with convs, pastel's low
# scales pushed many backgrounds to other palette colours, and its saturation rose from 0 to 0.25
LORA_LOCON = {"outline": True, "pastel": False, "stripes": True}


def setup():
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception:
        pass


def tokenizer():
    return Tokenizer(data.all_words())


def text_config(tok):
    return dict(models.TEXT_CONFIG, vocab_size=len(tok.vocab), bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                pad_token_id=tok.pad_id)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def lr_at(step, total, base, warm=50):
    if step < warm:
        return base * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def to_float(imgs):
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ----------------------------------------------------------------------------- phases

def phase_data(work):
    p = os.path.join(work, "data.npz")
    if os.path.exists(p):
        return dict(np.load(p, allow_pickle=False))
    t0 = time.time()
    out = {}
    for i, style in enumerate(["base", "outline", "pastel", "stripes"]):
        imgs, caps = data.make_dataset(N_BASE if style == "base" else N_STYLE, SEED + i, style)
        out[style + "_img"], out[style + "_cap"] = imgs, np.array(caps)
    np.savez(p, **out)
    log(f"data: {sum(len(v) for k, v in out.items() if k.endswith('_img'))} images in {time.time() - t0:.1f}s")
    return out


def phase_vae(work, d):
    p = os.path.join(work, "vae.pt")
    vae = models.AutoencoderKL(models.VAE_CONFIG)
    if os.path.exists(p):
        vae.load_state_dict(torch.load(p))
        return vae
    t0 = time.time()
    allimg = np.concatenate([d["base_img"], d["outline_img"], d["pastel_img"], d["stripes_img"]])
    g = torch.Generator().manual_seed(SEED + 10)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    for step in range(VAE_STEPS):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, VAE_STEPS, 1e-3)
        idx = torch.randint(0, len(allimg), (VAE_BATCH,), generator=g).numpy()
        x = to_float(allimg[idx])
        mean, logvar = vae.encode(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)
        rec = vae.decode(z)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        l1 = (rec - x).abs().mean()
        loss = l1 + (rec - x).pow(2).mean() + 1e-4 * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == VAE_STEPS - 1:
            log(f"vae {step} l1 {l1.item():.4f} kl {kl.item():.2f} ({time.time() - t0:.0f}s)")
    torch.save(vae.state_dict(), p)
    log(f"vae: {VAE_STEPS} steps in {time.time() - t0:.1f}s")
    return vae


def phase_encode(work, d, vae):
    p = os.path.join(work, "latents.pt")
    if os.path.exists(p):
        return torch.load(p)
    t0 = time.time()
    out = {}
    with torch.no_grad():
        for style in ["base", "outline", "pastel", "stripes"]:
            imgs = d[style + "_img"]
            out[style] = torch.cat([vae.encode(to_float(imgs[i:i + 250]))[0] for i in range(0, len(imgs), 250)])
    std = out["base"].std().item()
    out["scaling_factor"] = float(f"{1.0 / std:.5f}")
    rec = vae.decode(out["base"][:64])
    err = (rec.clamp(-1, 1) - to_float(d["base_img"][:64])).abs().mean().item()
    log(f"encode: {time.time() - t0:.1f}s, latent std {std:.4f} -> scaling_factor {out['scaling_factor']}, "
        f"recon L1 {err:.4f}, latent mean {out['base'].mean().item():.4f}")
    torch.save(out, p)
    return out


def phase_vae_decoder(work, d, lat, vae):
    """Fine-tune decoder + post_quant_conv on (posterior mean, image) pairs; the encoder and latents stay fixed."""
    p = os.path.join(work, "vae_decoder.pt")
    if os.path.exists(p):
        vae.load_state_dict(dict(vae.state_dict(), **torch.load(p)))
        return vae
    t0 = time.time()
    allimg = np.concatenate([d["base_img"], d["outline_img"], d["pastel_img"], d["stripes_img"]])
    allz = torch.cat([lat["base"], lat["outline"], lat["pastel"], lat["stripes"]])
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    g = torch.Generator().manual_seed(SEED + 15)
    vae.train()
    for step in range(DEC_STEPS):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, DEC_STEPS, 1e-3, warm=20)
        idx = torch.randint(0, len(allimg), (DEC_BATCH,), generator=g)
        x = to_float(allimg[idx.numpy()])
        rec = vae.decode(allz[idx])
        l1 = (rec - x).abs().mean()
        loss = l1 + (rec - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == DEC_STEPS - 1:
            log(f"vae decoder {step} l1 {l1.item():.4f} ({time.time() - t0:.0f}s)")
    vae.eval()
    sd = {k: v for k, v in vae.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}
    torch.save(sd, p)
    log(f"vae decoder: {DEC_STEPS} steps in {time.time() - t0:.1f}s")
    return vae


def diffusion_loss(te, unet, lat, ids, g, ac):
    b = lat.shape[0]
    t = torch.randint(0, sched.T, (b,), generator=g)
    eps = torch.randn(lat.shape, generator=g)
    a = ac[t][:, None, None, None]
    xt = a.sqrt() * lat + (1 - a).sqrt() * eps
    ctx, _ = te(ids)
    return (unet(xt, t.float(), ctx) - eps).pow(2).mean()


def caption_ids(tok, caps):
    return torch.tensor([tok.encode(str(c)) for c in caps], dtype=torch.long)


def drop_captions(ids, empty, g):
    drop = torch.rand(ids.shape[0], generator=g) < CAPTION_DROPOUT
    return torch.where(drop[:, None], empty[None, :], ids)


def unet_train(te, unet, x0, ids, tok, steps, peak, warm, seed, label):
    """Joint text encoder + UNet training with an EMA of the weights (the EMA is what is kept)."""
    t0 = time.time()
    empty = torch.tensor(tok.encode(""), dtype=torch.long)
    ac = torch.from_numpy(sched.alphas_cumprod())
    params = list(te.parameters()) + list(unet.parameters())
    ema = [q.detach().clone() for q in params]
    opt = torch.optim.AdamW(params, lr=peak, betas=(0.9, 0.99), weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    run = 0.0
    for step in range(steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, peak, warm=warm)
        idx = torch.randint(0, len(x0), (UNET_BATCH,), generator=g)
        loss = diffusion_loss(te, unet, x0[idx], drop_captions(ids[idx], empty, g), g, ac)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, q in zip(ema, params):
                e.mul_(decay).add_(q.detach(), alpha=1 - decay)
        run = loss.item() if step == 0 else 0.98 * run + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"{label} {step} loss {run:.4f} ({time.time() - t0:.0f}s)")
    with torch.no_grad():
        for e, q in zip(ema, params):
            q.copy_(e)
    log(f"{label}: {steps} steps in {time.time() - t0:.1f}s")


def phase_unet(work, d, lat, tok):
    """The UNET_RUNS in turn, each from the checkpoint of the one before (unet_stage<k>.pt); base.pt = the last."""
    p = os.path.join(work, "base.pt")
    te, unet = models.CLIPTextModel(text_config(tok)), models.UNet2DConditionModel(models.UNET_CONFIG)

    def load(path):
        sd = torch.load(path)
        te.load_state_dict(sd["text_encoder"])
        unet.load_state_dict(sd["unet"])

    if os.path.exists(p):
        load(p)
        return te, unet
    x0 = lat["base"] * lat["scaling_factor"]
    ids = caption_ids(tok, d["base_cap"])
    for k, (steps, peak, warm) in enumerate(UNET_RUNS, start=1):
        stage = os.path.join(work, f"unet_stage{k}.pt")
        if os.path.exists(stage):
            load(stage)
            continue
        unet_train(te, unet, x0, ids, tok, steps, peak, warm, SEED + 19 + k, f"unet stage {k}")
        torch.save({"text_encoder": te.state_dict(), "unet": unet.state_dict()}, stage)
    torch.save({"text_encoder": te.state_dict(), "unet": unet.state_dict()}, p)
    return te, unet


def load_base(work, tok):
    sd = torch.load(os.path.join(work, "base.pt"))
    te, unet = models.CLIPTextModel(text_config(tok)), models.UNet2DConditionModel(models.UNET_CONFIG)
    te.load_state_dict(sd["text_encoder"])
    unet.load_state_dict(sd["unet"])
    return te.eval(), unet.eval()


def phase_lora(work, d, lat, tok, name, k):
    p = os.path.join(work, f"lora_{name}.pt")
    if os.path.exists(p):
        return torch.load(p)
    fmt, r, alpha = LORAS[name]
    steps, peak = LORA_TRAIN[name]
    t0 = time.time()
    te, unet = load_base(work, tok)
    torch.manual_seed(SEED + 40 + k)  # LoRA init must not depend on which earlier phases ran in this process
    for q in list(te.parameters()) + list(unet.parameters()):
        q.requires_grad_(False)
    te_layers = L.inject(te, L.te_targets(te), r, alpha)
    un_layers = L.inject(unet, L.unet_targets(unet, convs=LORA_LOCON[name]), r, alpha)
    params = [q for l in list(te_layers.values()) + list(un_layers.values()) for q in (l.down.weight, l.up.weight)]
    opt = torch.optim.AdamW(params, lr=2e-3, betas=(0.9, 0.99), weight_decay=0.0)
    x0 = lat[name] * lat["scaling_factor"]
    ids = caption_ids(tok, d[name + "_cap"])
    empty = torch.tensor(tok.encode(""), dtype=torch.long)
    ac = torch.from_numpy(sched.alphas_cumprod())
    g = torch.Generator().manual_seed(SEED + 30 + k)
    run = 0.0
    for step in range(steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, peak, warm=10)
        idx = torch.randint(0, len(x0), (LORA_BATCH,), generator=g)
        loss = diffusion_loss(te, unet, x0[idx], drop_captions(ids[idx], empty, g), g, ac)
        opt.zero_grad()
        loss.backward()
        opt.step()
        run = loss.item() if step == 0 else 0.95 * run + 0.05 * loss.item()
        if step % 10 == 0 or step == steps - 1:
            log(f"lora {name} {step} loss {run:.4f} ({time.time() - t0:.0f}s)")
    out = {"te": L.extract(te_layers), "unet": L.extract(un_layers)}
    torch.save(out, p)
    log(f"lora {name}: {steps} steps in {time.time() - t0:.1f}s")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "..", "pipeline"))
    ap.add_argument("--work", default="/tmp/fuseload-sample-work")
    ap.add_argument("--fresh", action="store_true", help="delete the checkpoints in --work first")
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args()
    setup()
    os.makedirs(a.work, exist_ok=True)
    if a.fresh:
        for f in os.listdir(a.work):
            os.remove(os.path.join(a.work, f))
    times = {}
    t = time.time()
    tok = tokenizer()
    d = phase_data(a.work)
    times["data"] = time.time() - t
    t = time.time()
    vae = phase_vae(a.work, d).eval()
    times["vae"] = time.time() - t
    t = time.time()
    lat = phase_encode(a.work, d, vae)
    times["encode"] = time.time() - t
    t = time.time()
    phase_vae_decoder(a.work, d, lat, vae)
    times["vae_decoder"] = time.time() - t
    t = time.time()
    phase_unet(a.work, d, lat, tok)
    times["unet_te"] = time.time() - t
    for k, name in enumerate(LORAS):
        t = time.time()
        phase_lora(a.work, d, lat, tok, name, k)
        times["lora_" + name] = time.time() - t
    log("phase seconds: " + json.dumps({k: round(v, 1) for k, v in times.items()}))
    if not a.no_export:
        import export
        export.export_all(a.work, a.out)


if __name__ == "__main__":
    main()
