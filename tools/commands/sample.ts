import type { Command } from 'commander';
import { join, resolve } from 'node:path';
import { examplePrompts, writeSample } from '../sample/sample.ts';

export function register(program: Command): void {
  program
    .command('sample')
    .description('write the sample pipeline (a small Stable Diffusion trained on coloured shapes, diffusers ONNX layout) and its three LoRAs into <dir>')
    .argument('<dir>', 'directory to write the pipeline (model_index.json, text_encoder/, unet/, …) and loras/ into')
    .action(async (dir: string) => {
      const s = await writeSample(resolve(dir));
      const size = s.palette.image_size;
      const components = s.files.filter((f) => f.endsWith('/model.onnx')).map((f) => f.split('/')[0]);
      const lora = (f: string) => join(dir, f);
      const first = s.loras[0];
      process.stdout.write(
        `${dir}: wrote the sample pipeline (${components.join(', ')}; ${size}×${size} images) and ${s.loras.length} LoRAs, ${s.files.length} files\n` +
          `A small Stable Diffusion trained on synthetic shapes: ${Object.keys(s.palette.colors).length} colours, ${s.palette.shapes.join('s, ')}s. Try "${examplePrompts(s.palette)[0]}".\n` +
          s.loras.map((l) => `  ${l.file} (${l.format})${l.style ? `: ${l.style}` : ''}\n`).join('') +
          `Next: fuseload build --base ${dir} --name sample --out ./artifacts` +
          (first ? ` [--lora ${lora(first.file)}:1]` : '') +
          '\n',
      );
    });
}
