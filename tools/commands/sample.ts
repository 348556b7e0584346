import type { Command } from 'commander';
import { resolve } from 'node:path';
import { writeSample } from '../sample/sample.ts';

export function register(program: Command): void {
  program
    .command('sample')
    .description('write the procedural sample model (not a trained model) and three LoRAs into <dir>')
    .argument('<dir>', 'directory to write model.onnx and the LoRAs into')
    .action(async (dir: string) => {
      const files = await writeSample(resolve(dir));
      process.stdout.write(
        `${dir}: wrote ${files.join(', ')}\n` +
          'This is a procedural model with seeded random weights, not a trained one: it turns coordinates and noise into colour patterns.\n' +
          '  warm.safetensors (kohya keys, LoCon conv), cool.safetensors + cool.adapter_config.json (PEFT), detail.safetensors (diffusers)\n',
      );
    });
}
