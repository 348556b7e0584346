#!/usr/bin/python3
"""Write fixed inputs and the torch outputs of every component to --tmp, for check_onnx.mjs to compare with ORT."""
import argparse
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export  # noqa: E402
import models  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/fuseload-sample-work")
    ap.add_argument("--tmp", default="/tmp/fuseload-onnx-check")
    a = ap.parse_args()
    os.makedirs(a.tmp, exist_ok=True)
    tok, vae, te, unet, sf = export.load_all(a.work)
    g = torch.Generator().manual_seed(7)
    cases = []

    def case(comp, inputs, outputs):
        c = {"component": comp, "inputs": {}, "outputs": {}}
        for kind, d in (("inputs", inputs), ("outputs", outputs)):
            for k, v in d.items():
                f = f"{len(cases)}.{comp}.{kind}.{k}.bin"
                v.detach().numpy().tofile(os.path.join(a.tmp, f))
                c[kind][k] = {"file": f, "dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
        cases.append(c)

    with torch.no_grad():
        ids = torch.tensor([tok.encode("a green triangle on a white background"), tok.encode(""),
                            tok.encode("a small red square at the top left on a black background")], dtype=torch.int32)
        h, p = te(ids)
        case("text_encoder", {"input_ids": ids}, {"last_hidden_state": h, "pooler_output": p})
        x = torch.randn(3, 4, 8, 8, generator=g)
        t = torch.tensor([981.0, 501.0, 1.0])
        case("unet", {"sample": x, "timestep": t, "encoder_hidden_states": h}, {"out_sample": unet(x, t, h)})
        x2 = torch.randn(2, 4, 12, 16, generator=g)  # other size, timestep of shape [1]
        t2 = torch.tensor([301.0])
        case("unet", {"sample": x2, "timestep": t2, "encoder_hidden_states": h[:2]}, {"out_sample": unet(x2, t2, h[:2])})
        img = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
        case("vae_encoder", {"sample": img}, {"latent_sample": models.VAEEncoderExport(vae)(img)})
        z = torch.randn(2, 4, 8, 8, generator=g) / sf
        case("vae_decoder", {"latent_sample": z}, {"sample": models.VAEDecoderExport(vae)(z)})
    json.dump(cases, open(os.path.join(a.tmp, "cases.json"), "w"), indent=1)
    print("wrote", len(cases), "cases to", a.tmp)


if __name__ == "__main__":
    main()
