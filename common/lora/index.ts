/**
 * LoRA support shared by the build tool and both runtimes (no Node or DOM imports):
 * key → module normalisation, reading a LoRA file, and the fp32 delta math.
 */
export { applyLoraDelta, checkLoraDelta, loraFactor, type LoraMatrix, type LoraTarget } from './delta.ts';
export { bf16ToF32, bytesToF32, f16ToF32, f32ToBf16, f32ToBytes, f32ToF16, f32ToF16Bits, type FloatDtype } from './dtype.ts';
export { type LoraFormat, type LoraKey, type LoraPart, moduleFromInitializerName, moduleFromNodeName, moduleMatchKey, parseLoraKey } from './keys.ts';
export { type LoraAdapter, type LoraModule, parsePeftConfig, type PeftConfig, readLora } from './adapter.ts';
export { type LoraMatch, type LoraTargetEntry, matchLora, type RoutedLora, routeLora } from './match.ts';
