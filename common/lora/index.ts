/**
 * LoRA support shared by the build tool and both runtimes (no Node or DOM imports):
 * key → module normalisation, reading a LoRA file (every adapter type), matching it to a
 * tensor index, the fp32 delta math and the one merge recipe.
 */
export { applyLoraDelta, checkLoraDelta, loraFactor, type LoraMatrix, type LoraTarget } from './delta.ts';
export { bf16ToF32, bytesToF32, f16ToF32, f32ToBf16, f32ToBytes, f32ToF16, f32ToF16Bits, type FloatDtype } from './dtype.ts';
export { type LoraFormat, type LoraKey, type LoraPart, moduleFromInitializerName, moduleFromNodeName, moduleMatchKey, parseKohyaModule, parseLoraKey } from './keys.ts';
export { adapterTypeName, isPlainLora, type LoraAdapter, type LoraModule, parsePeftConfig, type PeftConfig, readLora } from './adapter.ts';
export { type AdapterDescription, type AdapterType, checkAdapterTarget, describeAdapter, splitAdapterKey } from './adapter-types.ts';
export { adapterDelta, addAdapterDelta, biasDelta, mergedWeight, needsBaseWeight, toTorchLayout, torchShape } from './adapter-delta.ts';
export { isSgmModuleName, kohyaToDiffusersModule } from './sdxl-names.ts';
export { type MergeInputs, type MergeKind } from './overlay-merge.ts';
export { type LoraApplication, type LoraMatch, type LoraPartTarget, type LoraTargetEntry, matchLora, type RoutedLora, routeLora } from './match.ts';
export { checkMergeDtype, DEFAULT_ORT_MIN_ELEMENTS, type MergeApplication, mergeEngine, type MergeRecipeOptions, type OrtMerge, ortInputs, type MergeTarget, mergeTensorBytes, orderApplications } from './merge-recipe.ts';
