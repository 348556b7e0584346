/**
 * Schedulers by name, configured from a pipeline's `scheduler/scheduler_config.json`.
 *
 *   const scheduler = createScheduler(config, 30);              // the config's own class
 *   const scheduler = createScheduler(config, 4, { name: 'lcm' });
 */
import { badInput } from '../../errors.ts';
import { SCHEDULER_CLASS, SchedulerConfig, schedulerNameForClass } from './config.ts';
import { DdimScheduler } from './ddim.ts';
import { DpmMultistepScheduler } from './dpm-multistep.ts';
import { EulerAncestralScheduler, EulerScheduler } from './euler.ts';
import { LcmScheduler } from './lcm.ts';
import { SCHEDULER_NAMES, type Scheduler, type SchedulerName } from './types.ts';

export { SCHEDULER_CLASS, schedulerNameForClass } from './config.ts';
export { DdimScheduler } from './ddim.ts';
export { DpmMultistepScheduler } from './dpm-multistep.ts';
export { EulerAncestralScheduler, EulerScheduler } from './euler.ts';
export { LcmScheduler } from './lcm.ts';
export { SCHEDULER_NAMES, type Scheduler, type SchedulerName } from './types.ts';

export interface CreateSchedulerOptions {
  /** Which scheduler to run; default: the one the config's `_class_name` maps to. */
  name?: SchedulerName;
  /** DDIM's η (0: deterministic DDIM, 1: DDPM-like); other schedulers ignore it. Default 0. */
  eta?: number;
}

export function isSchedulerName(name: unknown): name is SchedulerName {
  return typeof name === 'string' && (SCHEDULER_NAMES as readonly string[]).includes(name);
}

/** The scheduler `name` resolves to for this config (the option, else the config's class). */
export function resolveSchedulerName(config: unknown, name?: string): SchedulerName {
  if (name === undefined) {
    const className = config && typeof config === 'object' ? (config as Record<string, unknown>)._class_name : undefined;
    return schedulerNameForClass(className);
  }
  if (!isSchedulerName(name)) throw badInput('scheduler', `"${String(name).slice(0, 40)}" is not one of ${SCHEDULER_NAMES.join(', ')}`);
  return name;
}

/** A scheduler set up for `steps` steps (diffusers' `from_config` + `set_timesteps`). */
export function createScheduler(config: unknown, steps: number, options: CreateSchedulerOptions = {}): Scheduler {
  const name = resolveSchedulerName(config, options.name);
  if (!Number.isInteger(steps) || steps < 1) throw badInput('steps', `must be an integer ≥ 1, got ${steps}`);
  const resolved = new SchedulerConfig(config, SCHEDULER_CLASS[name]);
  switch (name) {
    case 'euler':
      return new EulerScheduler(resolved, steps);
    case 'euler-ancestral':
      return new EulerAncestralScheduler(resolved, steps);
    case 'ddim':
      return new DdimScheduler(resolved, steps, options.eta ?? 0);
    case 'dpm++2m':
      return new DpmMultistepScheduler(resolved, steps);
    case 'lcm':
      return new LcmScheduler(resolved, steps);
  }
}
