#!/usr/bin/python3
"""Export the trained checkpoints in --work to the diffusers ONNX layout in --out.

    /usr/bin/python3 tools/sample/train/export.py --work /tmp/fuseload-sample-work --out tools/sample/pipeline
"""
import argparse
import io
import json
import os
import shutil
import sys

import numpy as np
import onnx
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import data  # noqa: E402
import lora as L  # noqa: E402
import models  # noqa: E402
import sched  # noqa: E402
import train  # noqa: E402

DIFFUSERS_VERSION = "0.27.2"


def dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2) + "\n")


def onnx_export(module, args, path, inputs, outputs, axes):
    module.eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, args, buf, input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=17, do_constant_folding=True, export_params=True)
    m = onnx.load_from_string(buf.getvalue())
    m.producer_name, m.producer_version = "fuseload-sample", "1"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for f in (path, os.path.join(os.path.dirname(path), "model.onnx_data")):
        if os.path.exists(f):
            os.remove(f)  # onnx appends to an existing data file
    onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx_data",
                    size_threshold=1024)


def load_all(work):
    tok = train.tokenizer()
    vae = models.AutoencoderKL(models.VAE_CONFIG)
    vae.load_state_dict(torch.load(os.path.join(work, "vae.pt")))
    dec = os.path.join(work, "vae_decoder.pt")
    if os.path.exists(dec):
        vae.load_state_dict(dict(vae.state_dict(), **torch.load(dec)))
    te, unet = train.load_base(work, tok)
    sf = torch.load(os.path.join(work, "latents.pt"))["scaling_factor"]
    return tok, vae.eval(), te, unet, sf


def export_all(work, out):
    train.setup()
    tok, vae, te, unet, sf = load_all(work)
    tcfg = train.text_config(tok)
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer"))

    ids = torch.tensor([tok.encode("a red circle on a blue background"), tok.encode("")], dtype=torch.int32)
    onnx_export(te, (ids,), os.path.join(out, "text_encoder", "model.onnx"), ["input_ids"],
                ["last_hidden_state", "pooler_output"],
                {"input_ids": {0: "batch", 1: "sequence"}, "last_hidden_state": {0: "batch", 1: "sequence"},
                 "pooler_output": {0: "batch"}})
    dump(os.path.join(out, "text_encoder", "config.json"), dict(
        tcfg, _name_or_path="fuseload-sample", architectures=["CLIPTextModel"], model_type="clip_text_model",
        torch_dtype="float32", initializer_range=0.02, attention_dropout=0.0))

    ctx = te(ids.long())[0].detach()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([500.0, 500.0])
    onnx_export(unet, (x, ts, ctx), os.path.join(out, "unet", "model.onnx"),
                ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
                {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
                 "encoder_hidden_states": {0: "batch", 1: "sequence"},
                 "out_sample": {0: "batch", 2: "height", 3: "width"}})
    ucfg = {k: v for k, v in models.UNET_CONFIG.items() if k != "ff_mult"}
    dump(os.path.join(out, "unet", "config.json"), dict(
        ucfg, _class_name="UNet2DConditionModel", _diffusers_version=DIFFUSERS_VERSION, center_input_sample=False,
        only_cross_attention=False, time_embedding_dim=None, feedforward_mult=models.UNET_CONFIG["ff_mult"],
        transformer_layers_per_block=1, upcast_attention=False, scaling_factor=sf,
        note="attention_head_dim is the number of heads, as in SD 1.x configs; latent h and w must be even"))

    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    vcfg = dict(models.VAE_CONFIG, _class_name="AutoencoderKL", _diffusers_version=DIFFUSERS_VERSION,
                scaling_factor=sf, force_upcast=False,
                note="downsampling factor 8: 64x64 image <-> 4x8x8 latent; decoder output clamped to [-1,1]")
    onnx_export(models.VAEEncoderExport(vae), (img,), os.path.join(out, "vae_encoder", "model.onnx"), ["sample"],
                ["latent_sample"], {"sample": {0: "batch", 2: "height", 3: "width"},
                                    "latent_sample": {0: "batch", 2: "latent_height", 3: "latent_width"}})
    dump(os.path.join(out, "vae_encoder", "config.json"), vcfg)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    onnx_export(models.VAEDecoderExport(vae), (z,), os.path.join(out, "vae_decoder", "model.onnx"), ["latent_sample"],
                ["sample"], {"latent_sample": {0: "batch", 2: "latent_height", 3: "latent_width"},
                             "sample": {0: "batch", 2: "height", 3: "width"}})
    dump(os.path.join(out, "vae_decoder", "config.json"), vcfg)

    dump(os.path.join(out, "scheduler", "scheduler_config.json"), sched.SCHEDULER_CONFIG)
    dump(os.path.join(out, "model_index.json"), {
        "_class_name": "OnnxStableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["diffusers", "OnnxRuntimeModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "OnnxRuntimeModel"],
        "vae_decoder": ["diffusers", "OnnxRuntimeModel"],
        "vae_encoder": ["diffusers", "OnnxRuntimeModel"],
    })
    pal = data.palette_json()
    pal["loras"] = {n: {"file": f"loras/{n}.safetensors", "format": f, "rank": r, "alpha": a}
                    for n, (f, r, a) in train.LORAS.items()}
    dump(os.path.join(out, "sample_palette.json"), pal)

    ld = os.path.join(out, "loras")
    os.makedirs(ld, exist_ok=True)
    for name, (fmt, r, alpha) in train.LORAS.items():
        p = os.path.join(work, f"lora_{name}.pt")
        if not os.path.exists(p):
            print("no LoRA checkpoint", p)
            continue
        lo = torch.load(p)
        meta = {"format": "pt", "fuseload_sample_style": name}
        if fmt == "kohya":
            meta.update(ss_network_dim=str(r), ss_network_alpha=str(alpha), ss_network_module="networks.lora")
        L.write_safetensors(os.path.join(ld, f"{name}.safetensors"), L.to_file_tensors(fmt, lo["te"], lo["unet"]), meta)
        if fmt == "peft":
            modules = list(lo["te"]) + list(lo["unet"])
            leaves = [leaf for leaf in ("q_proj", "k_proj", "v_proj", "out_proj", "to_q", "to_k", "to_v", "to_out.0", "proj_in",
                                        "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2")
                      if any(m.endswith("." + leaf) for m in modules)]
            dump(os.path.join(ld, f"{name}.adapter_config.json"), {
                "peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": leaves, "bias": "none",
                "use_rslora": False, "use_dora": False, "lora_dropout": 0.0, "init_lora_weights": True,
                "task_type": None})
    print("exported to", out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "..", "pipeline"))
    ap.add_argument("--work", default="/tmp/fuseload-sample-work")
    a = ap.parse_args()
    export_all(a.work, a.out)
