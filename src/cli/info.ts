// dsv3 info: what a model directory holds and what it costs to run.

import { openCheckpoint } from '../io/checkpoint-files.js';
import { readConfig } from '../model/load.js';
import { cacheValuesPerToken, countParameters } from '../model/parameter-count.js';
import { stringFlag, type Command } from './args.js';

function human(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} k`;
  return String(n);
}

/** The GPU, its driver and the CUDA libraries with their paths, or why there is none. */
async function deviceLines(): Promise<[string, string][]> {
  try {
    const { CudaContext } = await import('../backend/cuda/context.js');
    const ctx = CudaContext.create(0);
    try {
      const d = ctx.describe();
      const gib = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;
      return [
        ['GPU', `${d.name} (compute capability ${d.computeCapability}, ${d.arch}, ${d.smCount} SMs, ${gib(d.freeMemoryBytes)} free of ${gib(d.totalMemoryBytes)})`],
        ['CUDA', `driver ${d.driverVersion}, NVRTC ${d.nvrtcVersion}, cuBLASLt ${d.cublasLtVersion}`],
        ...Object.entries(d.libraries).map(([id, file]): [string, string] => [`  ${id}`, String(file)]),
      ];
    } finally {
      ctx.dispose();
    }
  } catch (e) {
    // the discovery message goes on to list every folder searched; its first clause says what is missing
    return [['GPU', `none usable (${(e as Error).message.split(': tried')[0]}); --device auto uses the CPU`]];
  }
}

export const infoCommand: Command = {
  name: 'info',
  summary: 'describe a model directory (parameters, layers, experts, dtypes, cache size) and the GPU',
  usage: `dsv3 info [--model DIR]

Without --model, describes only the device: the GPU, its driver, and the CUDA libraries found.

  --model DIR   Hugging Face model directory (config.json and *.safetensors)`,
  options: { model: { type: 'string' } },
  async run(values) {
    const dir = stringFlag(values, 'model');
    const device = await deviceLines();
    if (dir === undefined) {
      for (const [k, v] of device) console.log(`${k.padEnd(16)} ${v}`);
      return;
    }
    const c = readConfig(dir);
    const ckpt = openCheckpoint(dir);
    const dtypes = new Map<string, number>();
    let stored = 0;
    const mtpStored = ckpt.names().some((n) => n.startsWith(`model.layers.${c.numHiddenLayers}.`));
    for (const name of ckpt.names()) {
      const info = ckpt.info(name);
      if (name.endsWith('_scale_inv')) continue;
      stored += info.shape.reduce((a, b) => a * b, 1);
      dtypes.set(info.dtype, (dtypes.get(info.dtype) ?? 0) + 1);
    }
    ckpt.close();
    const p = countParameters(c);
    const cache = cacheValuesPerToken(c);
    const bytes = 2; // BF16, the serving dtype
    const moeLayers = c.numHiddenLayers - c.firstKDenseReplace;
    const rows: [string, string][] = [
      ['model', `${c.modelType} (${dir})`],
      ['parameters', `${human(p.total)} total, ${human(p.activatedPerToken)} activated per token (${p.total} / ${p.activatedPerToken})`],
      ['MTP modules', c.numNextnPredictLayers > 0 ? `${c.numNextnPredictLayers} (${human(p.mtp)} parameters; weights ${mtpStored ? 'in the checkpoint' : 'not in the checkpoint, so no speculative decoding'})` : 'none'],
      ['stored', `${human(stored)} parameters in the checkpoint; dtypes ${[...dtypes].map(([d, n]) => `${d} ×${n}`).join(', ')}${c.fp8WeightBlock ? ' (FP8 with 128×128 block scales)' : ''}`],
      ['layers', `${c.numHiddenLayers} (${c.firstKDenseReplace} dense, ${moeLayers} MoE), hidden ${c.hiddenSize}, vocab ${c.vocabSize}`],
      ['attention', `MLA, ${c.numAttentionHeads} heads, q_lora ${c.qLoraRank ?? 'none'}, kv_lora ${c.kvLoraRank}, nope/rope/v ${c.qkNopeHeadDim}/${c.qkRopeHeadDim}/${c.vHeadDim}, rope ${c.ropeScaling.type}`],
      ['experts', `${c.nRoutedExperts} routed (${c.numExpertsPerTok} per token, ${c.nGroup} groups, ${c.topkGroup} kept, ${c.scoringFunc}) + ${c.nSharedExperts} shared, width ${c.moeIntermediateSize}`],
      ['KV cache/token', `MLA ${cache.mla} values = ${cache.mla * bytes} bytes in BF16; plain multi-head attention of this shape ${cache.mha} values = ${cache.mha * bytes} bytes (MLA ${((100 * cache.mla) / cache.mha).toFixed(2)}%)`],
    ];
    for (const [k, v] of [...rows, ...device]) console.log(`${k.padEnd(16)} ${v}`);
  },
};
