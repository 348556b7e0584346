#!/usr/bin/python3
"""Reference outputs of the torch pipeline for the TS generation test (test/fixtures/sample-reference/).

    /usr/bin/python3 tools/sample/train/reference.py --work /tmp/fuseload-sample-work --out test/fixtures/sample-reference
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pipe as P  # noqa: E402
import sched  # noqa: E402

PROMPTS = ["a red circle on a blue background", "a green triangle on a white background"]
STEPS, GUIDANCE, SEED = 8, 5.0, 42


def f32(path, t):
    t.detach().numpy().astype("<f4").tofile(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/fuseload-sample-work")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "..", "..", "test", "fixtures", "sample-reference"))
    ap.add_argument("--preview", default="/tmp/sample-preview")
    a = ap.parse_args()
    torch.set_num_threads(2)
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.preview, exist_ok=True)
    p = P.Pipe(a.work)
    ts_e, sig = sched.euler_sigmas(STEPS)
    ref = {
        "description": "fuseload sample pipeline, run by an independent torch implementation of the loop "
                       "(tools/sample/train/pipe.py + sched.py, torch modules, not the ONNX graphs)",
        "pipeline": "tools/sample/pipeline",
        "dtype": "float32 little-endian, C order",
        "negative_prompt": "",
        "guidance_scale": GUIDANCE,
        "num_inference_steps": STEPS,
        "scaling_factor": p.sf,
        "cfg": "unet batch = [uncond, cond]; eps = eps_uncond + guidance * (eps_cond - eps_uncond); timestep input "
               "float32 [2] (same t twice)",
        "decode": "image = clamp(vae_decoder(latents / scaling_factor), -1, 1)",
        "init_latents": "torch.randn(1,4,8,8, generator=torch.Generator().manual_seed(seed + index))",
        "schedulers": {
            "euler": {"class": "EulerDiscreteScheduler", "timestep_spacing": "leading", "steps_offset": 1,
                      "timesteps": [int(t) for t in ts_e], "sigmas": [float(s) for s in sig],
                      "init_noise_sigma": float((sig.max() ** 2 + 1) ** 0.5),
                      "model_input": "latents / sqrt(sigma^2 + 1)", "step": "latents += eps * (sigma_next - sigma)"},
            "ddim": {"class": "DDIMScheduler", "eta": 0.0, "timestep_spacing": "leading", "steps_offset": 1,
                     "set_alpha_to_one": False, "timesteps": [int(t) for t in sched.leading_timesteps(STEPS)],
                     "prev_timestep": "t - 1000 // steps (alphas_cumprod[0] when negative)",
                     "init_noise_sigma": 1.0},
        },
        "cases": [],
    }
    previews = []
    for i, prompt in enumerate(PROMPTS):
        tag = f"p{i}"
        ids_c, ids_u = p.tok.encode(prompt), p.tok.encode("")
        cond, unc = p.embed([prompt]), p.embed([""])
        f32(os.path.join(a.out, f"{tag}.text_embeddings.f32"), torch.cat([unc, cond]))
        x0 = P.Pipe.init_latents([SEED + i])
        f32(os.path.join(a.out, f"{tag}.init_latents.f32"), x0)
        case = {"prompt": prompt, "seed": SEED + i, "input_ids": ids_c, "uncond_input_ids": ids_u,
                "text_embeddings": {"file": f"{tag}.text_embeddings.f32", "shape": [2, 16, 64], "order": ["uncond", "cond"]},
                "init_latents": {"file": f"{tag}.init_latents.f32", "shape": [1, 4, 8, 8],
                                 "note": "unscaled N(0,1); Euler multiplies by init_noise_sigma first"},
                "results": {}}
        for sch in ("euler", "ddim"):
            fn = sched.sample_euler if sch == "euler" else sched.sample_ddim
            lat = fn(p.unet, x0.clone(), unc, cond, STEPS, GUIDANCE)[0]
            img = p.decode(lat)[0]
            f32(os.path.join(a.out, f"{tag}.{sch}.latents.f32"), lat)
            f32(os.path.join(a.out, f"{tag}.{sch}.image.f32"), img)
            case["results"][sch] = {
                "latents": {"file": f"{tag}.{sch}.latents.f32", "shape": [1, 4, 8, 8]},
                "image": {"file": f"{tag}.{sch}.image.f32", "shape": [3, 64, 64], "range": [-1, 1]},
                "image_mean": float(img.mean()),
            }
            previews.append(P.to_uint8(img[None])[0])
        ref["cases"].append(case)
    with open(os.path.join(a.out, "reference.json"), "w") as f:
        f.write(json.dumps(ref, indent=2) + "\n")
    P.write_png(os.path.join(a.preview, "reference.png"), P.grid(np.stack(previews), 4, 4))
    print("reference written to", a.out)


if __name__ == "__main__":
    main()
