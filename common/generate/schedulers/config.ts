/**
 * diffusers' `scheduler/scheduler_config.json`, read the way diffusers reads it when a pipeline
 * swaps its scheduler: `Target.from_config(pipe.scheduler.config)`. The loaded config of the
 * file's own class (`_class_name`) holds every argument of that class, its defaults filled in;
 * the target keeps the arguments it knows. So a value comes from the file, else from the
 * defaults of the file's class, else from the target's defaults. That is why Stable Diffusion
 * 1.5's PNDM config (no `timestep_spacing` in the file) gives Euler "leading" spacing.
 */
import { badInput, FuseloadError } from '../../errors.ts';
import type { SchedulerName } from './types.ts';

const FILE = 'scheduler_config.json';

type Defaults = Readonly<Record<string, unknown>>;

const COMMON: Defaults = {
  num_train_timesteps: 1000,
  beta_start: 0.0001,
  beta_end: 0.02,
  beta_schedule: 'linear',
  trained_betas: null,
  prediction_type: 'epsilon',
};
const THRESHOLDING: Defaults = { thresholding: false, dynamic_thresholding_ratio: 0.995, sample_max_value: 1.0 };

/** `__init__` defaults of the diffusers scheduler classes (diffusers 0.3x). */
const CLASS_DEFAULTS: Readonly<Record<string, Defaults>> = {
  EulerDiscreteScheduler: {
    ...COMMON,
    interpolation_type: 'linear',
    use_karras_sigmas: false,
    use_exponential_sigmas: false,
    use_beta_sigmas: false,
    sigma_min: null,
    sigma_max: null,
    timestep_spacing: 'linspace',
    timestep_type: 'discrete',
    steps_offset: 0,
    rescale_betas_zero_snr: false,
    final_sigmas_type: 'zero',
  },
  EulerAncestralDiscreteScheduler: { ...COMMON, timestep_spacing: 'linspace', steps_offset: 0, rescale_betas_zero_snr: false },
  DDIMScheduler: {
    ...COMMON,
    ...THRESHOLDING,
    clip_sample: true,
    set_alpha_to_one: true,
    steps_offset: 0,
    clip_sample_range: 1.0,
    timestep_spacing: 'leading',
    rescale_betas_zero_snr: false,
  },
  DPMSolverMultistepScheduler: {
    ...COMMON,
    ...THRESHOLDING,
    solver_order: 2,
    algorithm_type: 'dpmsolver++',
    solver_type: 'midpoint',
    lower_order_final: true,
    euler_at_final: false,
    use_karras_sigmas: false,
    use_exponential_sigmas: false,
    use_beta_sigmas: false,
    use_lu_lambdas: false,
    use_flow_sigmas: false,
    final_sigmas_type: 'zero',
    lambda_min_clipped: -Infinity,
    variance_type: null,
    timestep_spacing: 'linspace',
    steps_offset: 0,
    rescale_betas_zero_snr: false,
    use_dynamic_shifting: false,
  },
  LCMScheduler: {
    ...COMMON,
    ...THRESHOLDING,
    beta_start: 0.00085,
    beta_end: 0.012,
    beta_schedule: 'scaled_linear',
    original_inference_steps: 50,
    clip_sample: false,
    clip_sample_range: 1.0,
    set_alpha_to_one: true,
    steps_offset: 0,
    timestep_spacing: 'leading',
    timestep_scaling: 10.0,
    rescale_betas_zero_snr: false,
  },
  // Classes we do not run, for the defaults their loaded configs carry.
  PNDMScheduler: { ...COMMON, skip_prk_steps: false, set_alpha_to_one: false, timestep_spacing: 'leading', steps_offset: 0 },
  LMSDiscreteScheduler: { ...COMMON, use_karras_sigmas: false, timestep_spacing: 'linspace', steps_offset: 0 },
  DDPMScheduler: {
    ...COMMON,
    ...THRESHOLDING,
    variance_type: 'fixed_small',
    clip_sample: true,
    clip_sample_range: 1.0,
    timestep_spacing: 'leading',
    steps_offset: 0,
    rescale_betas_zero_snr: false,
  },
};

/** The diffusers class each scheduler name runs. */
export const SCHEDULER_CLASS: Readonly<Record<SchedulerName, string>> = {
  euler: 'EulerDiscreteScheduler',
  'euler-ancestral': 'EulerAncestralDiscreteScheduler',
  ddim: 'DDIMScheduler',
  'dpm++2m': 'DPMSolverMultistepScheduler',
  lcm: 'LCMScheduler',
};

/**
 * The scheduler a pipeline runs when the caller names none: its own class, or for classes not
 * implemented here the closest one we have. Deterministic multistep solvers (PNDM/PLMS — the
 * Stable Diffusion 1.x default —, LMS, UniPC, DEIS, single-step DPM) → DPM++ 2M, which matches
 * them in quality at 20–30 steps; DDPM → DDIM (same noise schedule, deterministic); Heun and
 * KDPM2 → Euler (ancestral for the ancestral variants); anything else → Euler.
 */
export function schedulerNameForClass(className: unknown): SchedulerName {
  switch (className) {
    case 'EulerDiscreteScheduler':
    case 'HeunDiscreteScheduler':
    case 'KDPM2DiscreteScheduler':
    case 'EDMEulerScheduler':
      return 'euler';
    case 'EulerAncestralDiscreteScheduler':
    case 'KDPM2AncestralDiscreteScheduler':
      return 'euler-ancestral';
    case 'DDIMScheduler':
    case 'DDPMScheduler':
      return 'ddim';
    case 'LCMScheduler':
      return 'lcm';
    case 'DPMSolverMultistepScheduler':
    case 'DPMSolverSinglestepScheduler':
    case 'DPMSolverSDEScheduler':
    case 'PNDMScheduler':
    case 'LMSDiscreteScheduler':
    case 'UniPCMultistepScheduler':
    case 'DEISMultistepScheduler':
      return 'dpm++2m';
    default:
      return 'euler';
  }
}

/** A target class's arguments, resolved from a raw config; typed getters validate as they read. */
export class SchedulerConfig {
  readonly #values: Record<string, unknown>;

  constructor(
    raw: unknown,
    readonly className: string,
  ) {
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw badInput(FILE, 'must be a JSON object');
    const file = raw as Record<string, unknown>;
    const target = CLASS_DEFAULTS[className];
    if (!target) throw new FuseloadError('unsupported', `${FILE}: scheduler class ${className} is not supported`);
    const source = typeof file._class_name === 'string' ? CLASS_DEFAULTS[file._class_name] ?? {} : {};
    const values: Record<string, unknown> = {};
    for (const key of Object.keys(target)) {
      values[key] = key in file ? file[key] : key in source ? source[key] : target[key];
    }
    this.#values = values;
  }

  /** Whether the argument is set (not None). */
  has(key: string): boolean {
    return this.#values[key] !== null && this.#values[key] !== undefined;
  }

  number(key: string, check: (n: number) => boolean = Number.isFinite, what = 'a finite number'): number {
    const v = this.#values[key];
    if (typeof v !== 'number' || !check(v)) throw badInput(FILE, `${key} must be ${what}, got ${show(v)}`);
    return v;
  }

  /** A number or None: `null` when unset. */
  optionalNumber(key: string): number | null {
    return this.has(key) ? this.number(key) : null;
  }

  integer(key: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
    return this.number(key, (n) => Number.isInteger(n) && n >= min && n <= max, `an integer in ${min}…${max}`);
  }

  boolean(key: string): boolean {
    const v = this.#values[key];
    if (typeof v !== 'boolean') throw badInput(FILE, `${key} must be true or false, got ${show(v)}`);
    return v;
  }

  oneOf<T extends string>(key: string, allowed: readonly T[]): T {
    const v = this.#values[key];
    if (typeof v !== 'string' || !allowed.includes(v as T)) {
      throw badInput(FILE, `${key} must be one of ${allowed.join(', ')}, got ${show(v)}`);
    }
    return v as T;
  }

  /** `trained_betas`, when given: finite numbers in [0, 1), one per training timestep. */
  trainedBetas(count: number): number[] | null {
    if (!this.has('trained_betas')) return null;
    const v = this.#values.trained_betas;
    if (!Array.isArray(v) || v.length !== count || !v.every((b) => typeof b === 'number' && b >= 0 && b < 1)) {
      throw badInput(FILE, `trained_betas must be ${count} numbers in [0, 1) (num_train_timesteps)`);
    }
    return v as number[];
  }

  /** Options this port does not implement must be off, not silently ignored. */
  requireOff(...keys: string[]): void {
    for (const key of keys) {
      if (this.#values[key] === true) throw new FuseloadError('unsupported', `${FILE}: ${key} is not supported by the ${this.className} port`);
    }
  }
}

function show(v: unknown): string {
  return typeof v === 'string' ? `"${v.slice(0, 40)}"` : String(JSON.stringify(v) ?? v).slice(0, 40);
}
