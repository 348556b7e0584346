"""LoRA layers on frozen modules, merging, and the three key formats (kohya / PEFT / diffusers) in safetensors."""
import json
import struct

import numpy as np
import torch
import torch.nn as nn

RANK = 8


class LoRALinear(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.r, self.alpha, self.scale = base, r, alpha, 1.0
        self.down = nn.Linear(base.in_features, r, bias=False)
        self.up = nn.Linear(r, base.out_features, bias=False)
        nn.init.normal_(self.down.weight, std=1.0 / r)
        nn.init.zeros_(self.up.weight)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x)) * (self.scale * self.alpha / self.r)


class LoRAConv(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.r, self.alpha, self.scale = base, r, alpha, 1.0
        self.down = nn.Conv2d(base.in_channels, r, base.kernel_size, base.stride, base.padding, bias=False)
        self.up = nn.Conv2d(r, base.out_channels, 1, bias=False)
        nn.init.normal_(self.down.weight, std=1.0 / (r * base.kernel_size[0]))
        nn.init.zeros_(self.up.weight)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x)) * (self.scale * self.alpha / self.r)


def te_targets(te):
    return [n for n, m in te.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "out_proj")]


def unet_targets(unet, convs=True):
    """Attention/FF linears; with `convs`, every ResNet conv1/conv2 too (LoCon)."""
    out = []
    for n, m in unet.named_modules():
        if isinstance(m, nn.Linear) and (".attentions." in n) and any(
                n.endswith(s) for s in ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")):
            out.append(n)
        elif convs and isinstance(m, nn.Conv2d) and ".resnets." in n and n.split(".")[-1] in ("conv1", "conv2"):
            out.append(n)
    return out


def _set(root, name, mod):
    parts = name.split(".")
    parent = root.get_submodule(".".join(parts[:-1])) if len(parts) > 1 else root
    setattr(parent, parts[-1], mod)


def inject(model, names, r, alpha):
    layers = {}
    for n in names:
        base = model.get_submodule(n)
        l = LoRALinear(base, r, alpha) if isinstance(base, nn.Linear) else LoRAConv(base, r, alpha)
        _set(model, n, l)
        layers[n] = l
    return layers


def set_scale(layers, s):
    for l in layers.values():
        l.scale = s


def extract(layers):
    """module -> (down [r,in(,k,k)], up [out,r(,1,1)], alpha) as float32 numpy."""
    return {n: (l.down.weight.detach().numpy().astype(np.float32), l.up.weight.detach().numpy().astype(np.float32), float(l.alpha))
            for n, l in layers.items()}


def merge_into(model, lora, scale):
    """W' = W + scale * (alpha / r) * up @ down, in place (what the build tool does)."""
    with torch.no_grad():
        for n, (down, up, alpha) in lora.items():
            m = model.get_submodule(n)
            r = down.shape[0]
            d = torch.from_numpy(up.reshape(up.shape[0], r)) @ torch.from_numpy(down.reshape(r, -1))
            m.weight += (scale * alpha / r) * d.reshape(m.weight.shape)


# ----------------------------------------------------------------------------- safetensors

def write_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    for k in sorted(tensors):
        a = np.array(tensors[k], order="C")  # keeps 0-d (alpha) scalars 0-d
        dt = {np.dtype("float32"): "F32", np.dtype("float16"): "F16"}[a.dtype]
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[k] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        dt = {"F32": "<f4", "F16": "<f2"}[v["dtype"]]
        out[k] = np.frombuffer(raw[8 + n + s:8 + n + e], dtype=dt).reshape(v["shape"]).astype(np.float32)
    return out


def to_file_tensors(fmt, te_lora, unet_lora):
    t = {}
    for comp, lora in (("te", te_lora), ("unet", unet_lora)):
        for n, (down, up, alpha) in lora.items():
            if fmt == "kohya":
                k = f"lora_{comp}_" + n.replace(".", "_")
                t[k + ".lora_down.weight"] = down
                t[k + ".lora_up.weight"] = up
                t[k + ".alpha"] = np.array(alpha, np.float32)
            elif fmt == "peft":
                k = ("text_encoder." if comp == "te" else "unet.") + n
                t[k + ".lora_A.weight"] = down
                t[k + ".lora_B.weight"] = up
            elif fmt == "diffusers":
                k = ("text_encoder." if comp == "te" else "unet.") + n
                t[k + ".lora.down.weight"] = down
                t[k + ".lora.up.weight"] = up
    return t


def from_file_tensors(fmt, tensors, te_names, unet_names, peft_alpha=None):
    """Inverse of to_file_tensors (used to check a written file round-trips)."""
    te, un = {}, {}
    for comp, names, dst in (("te", te_names, te), ("unet", unet_names, un)):
        for n in names:
            if fmt == "kohya":
                k = f"lora_{comp}_" + n.replace(".", "_")
                dst[n] = (tensors[k + ".lora_down.weight"], tensors[k + ".lora_up.weight"], float(tensors[k + ".alpha"]))
            elif fmt == "peft":
                k = ("text_encoder." if comp == "te" else "unet.") + n
                d = tensors[k + ".lora_A.weight"]
                dst[n] = (d, tensors[k + ".lora_B.weight"], float(peft_alpha))
            else:
                k = ("text_encoder." if comp == "te" else "unet.") + n
                d = tensors[k + ".lora.down.weight"]
                dst[n] = (d, tensors[k + ".lora.up.weight"], float(d.shape[0]))
    return te, un
