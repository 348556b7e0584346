export { isHuggingFaceHost, publicSource, resolveInput, type ResolveInputOptions, type ResolvedInput } from './resolve-input.ts';
