"""SD's noise schedule and two independent samplers (diffusers EulerDiscreteScheduler / DDIMScheduler semantics)."""
import numpy as np
import torch

T = 1000
BETA_START, BETA_END = 0.00085, 0.012
STEPS_OFFSET = 1

SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.27.2",
    "num_train_timesteps": T,
    "beta_start": BETA_START,
    "beta_end": BETA_END,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": STEPS_OFFSET,
    "timestep_spacing": "leading",
    "set_alpha_to_one": False,
    "clip_sample": False,
    "skip_prk_steps": True,
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "trained_betas": None,
}


def alphas_cumprod():
    betas = np.linspace(BETA_START ** 0.5, BETA_END ** 0.5, T, dtype=np.float32) ** 2
    return np.cumprod(1.0 - betas.astype(np.float64)).astype(np.float32)  # float32 like diffusers' torch tensors


def leading_timesteps(n):
    ratio = T // n
    return (np.arange(0, n) * ratio).round()[::-1].astype(np.int64) + STEPS_OFFSET


def euler_sigmas(n):
    ac = alphas_cumprod().astype(np.float64)
    s_all = ((1 - ac) / ac) ** 0.5
    ts = leading_timesteps(n)
    s = np.interp(ts.astype(np.float64), np.arange(T), s_all)
    return ts, np.concatenate([s, [0.0]]).astype(np.float32)


def cfg_eps(unet, x, t, ctx_uncond, ctx_cond, guidance):
    b = x.shape[0]
    xin = torch.cat([x, x])
    ctx = torch.cat([ctx_uncond, ctx_cond])
    tt = torch.full((2 * b,), float(t))
    e = unet(xin, tt, ctx)
    eu, ec = e[:b], e[b:]
    return eu + guidance * (ec - eu)


@torch.no_grad()
def sample_euler(unet, x, ctx_uncond, ctx_cond, steps, guidance):
    ts, sig = euler_sigmas(steps)
    x = x * float((sig.max() ** 2 + 1) ** 0.5)  # init_noise_sigma (leading spacing)
    for i, t in enumerate(ts):
        s = float(sig[i])
        eps = cfg_eps(unet, x / ((s * s + 1) ** 0.5), t, ctx_uncond, ctx_cond, guidance)
        x = x + eps * (float(sig[i + 1]) - s)  # derivative (x - x0)/sigma == eps for epsilon prediction
    return x, ts, sig


@torch.no_grad()
def sample_ddim(unet, x, ctx_uncond, ctx_cond, steps, guidance):
    ac = alphas_cumprod()
    ts = leading_timesteps(steps)
    ratio = T // steps
    final = float(ac[0])  # set_alpha_to_one = false
    for t in ts:
        eps = cfg_eps(unet, x, t, ctx_uncond, ctx_cond, guidance)
        a = float(ac[t])
        p = t - ratio
        ap = float(ac[p]) if p >= 0 else final
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        x = ap ** 0.5 * x0 + (1 - ap) ** 0.5 * eps
    return x, ts
