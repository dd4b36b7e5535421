// The model configuration: Hugging Face `config.json` for `deepseek_v3` (and `deepseek_v2`),
// parsed into one validated object (SPEC §1, §7). Anything we do not implement fails here,
// with the field and the value named, rather than producing silently wrong numbers later.

export interface RopeScaling {
  type: 'default' | 'yarn';
  factor: number;
  originalMaxPositionEmbeddings: number;
  betaFast: number;
  betaSlow: number;
  mscale: number;
  mscaleAllDim: number;
}

export interface ModelConfig {
  modelType: 'deepseek_v3' | 'deepseek_v2';
  vocabSize: number;
  hiddenSize: number;
  /** Width of the dense FFN (layers below firstKDenseReplace). */
  intermediateSize: number;
  /** Width of one routed expert; the shared experts together are nSharedExperts times this. */
  moeIntermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  /** null: queries are projected directly, without the low-rank compression. */
  qLoraRank: number | null;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  nRoutedExperts: number;
  nSharedExperts: number;
  numExpertsPerTok: number;
  nGroup: number;
  topkGroup: number;
  routedScalingFactor: number;
  normTopkProb: boolean;
  scoringFunc: 'sigmoid' | 'softmax';
  topkMethod: 'noaux_tc' | 'greedy' | 'group_limited_greedy';
  firstKDenseReplace: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** D, the number of multi-token-prediction modules (SPEC §4). */
  numNextnPredictLayers: number;
  /** Present when the checkpoint stores FP8 E4M3 weights with 128×128 `weight_scale_inv` blocks. */
  fp8WeightBlock: [number, number] | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

type Json = Record<string, unknown>;

class ConfigReader {
  constructor(private readonly json: Json, private readonly source: string) {}

  fail(field: string, value: unknown, why: string): never {
    throw new Error(`${this.source}: unsupported ${field} = ${JSON.stringify(value)}: ${why}`);
  }

  has(field: string): boolean {
    return this.json[field] !== undefined && this.json[field] !== null;
  }

  int(field: string, fallback?: number, min = 1): number {
    const v = this.json[field] ?? fallback;
    if (v === undefined) throw new Error(`${this.source}: missing required field "${field}"`);
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) this.fail(field, v, `expected an integer ≥ ${min}`);
    return v;
  }

  num(field: string, fallback?: number): number {
    const v = this.json[field] ?? fallback;
    if (v === undefined) throw new Error(`${this.source}: missing required field "${field}"`);
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(field, v, 'expected a finite number');
    return v;
  }

  bool(field: string, fallback: boolean): boolean {
    const v = this.json[field] ?? fallback;
    if (typeof v !== 'boolean') this.fail(field, v, 'expected true or false');
    return v;
  }

  oneOf<T extends string>(field: string, allowed: readonly T[], fallback: T): T {
    const v = this.json[field] ?? fallback;
    if (!allowed.includes(v as T)) this.fail(field, v, `expected one of ${allowed.join(', ')}`);
    return v as T;
  }
}

function parseRope(json: Json, r: ConfigReader, source: string, maxPositions: number): { theta: number; scaling: RopeScaling } {
  // transformers 5 writes `rope_parameters` (holding rope_theta and rope_type); older configs put
  // `rope_theta` and `rope_scaling` at the top level. Read both.
  const params = (json.rope_parameters ?? json.rope_scaling ?? null) as Json | null;
  if (params !== null && (typeof params !== 'object' || Array.isArray(params))) r.fail('rope_parameters', params, 'expected an object');
  const p = new ConfigReader(params ?? {}, `${source} (rope_parameters)`);
  const theta = p.has('rope_theta') ? p.num('rope_theta') : r.num('rope_theta', 10000);
  const type = (params?.rope_type ?? params?.type ?? 'default') as string;
  if (type !== 'default' && type !== 'yarn') r.fail('rope_type', type, 'only "default" and "yarn" are implemented');
  if (type === 'default') {
    return { theta, scaling: { type, factor: 1, originalMaxPositionEmbeddings: maxPositions, betaFast: 32, betaSlow: 1, mscale: 1, mscaleAllDim: 0 } };
  }
  const factor = p.num('factor');
  if (factor < 1) p.fail('factor', factor, 'YaRN needs factor ≥ 1');
  return {
    theta,
    scaling: {
      type,
      factor,
      originalMaxPositionEmbeddings: p.int('original_max_position_embeddings', maxPositions),
      betaFast: p.num('beta_fast', 32),
      betaSlow: p.num('beta_slow', 1),
      mscale: p.num('mscale', 1),
      mscaleAllDim: p.num('mscale_all_dim', 0),
    },
  };
}

function parseQuantization(json: Json, r: ConfigReader): [number, number] | null {
  const q = json.quantization_config as Json | undefined | null;
  if (q === undefined || q === null) return null;
  if (q.quant_method !== 'fp8') r.fail('quantization_config.quant_method', q.quant_method, 'only "fp8" is implemented');
  if ((q.fmt ?? 'e4m3') !== 'e4m3') r.fail('quantization_config.fmt', q.fmt, 'only "e4m3" is implemented');
  if ((q.activation_scheme ?? 'dynamic') !== 'dynamic') r.fail('quantization_config.activation_scheme', q.activation_scheme, 'only "dynamic" is implemented');
  const block = q.weight_block_size as unknown;
  if (!Array.isArray(block) || block.length !== 2 || !block.every((b) => Number.isInteger(b) && b > 0)) {
    r.fail('quantization_config.weight_block_size', block, 'expected two positive integers');
  }
  if (block[0] !== 128 || block[1] !== 128) r.fail('quantization_config.weight_block_size', block, 'only [128, 128] blocks are implemented');
  return [block[0] as number, block[1] as number];
}

function parseTokenIds(v: unknown, r: ConfigReader, field: string): number[] {
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  if (!list.every((x) => Number.isInteger(x) && x >= 0)) r.fail(field, v, 'expected a token id or a list of them');
  return list as number[];
}

/** Parse and validate a `config.json` object; `source` names it in error messages. */
export function parseConfig(json: unknown, source = 'config.json'): ModelConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new Error(`${source}: expected a JSON object`);
  const j = json as Json;
  const r = new ConfigReader(j, source);
  const modelType = r.oneOf('model_type', ['deepseek_v3', 'deepseek_v2'] as const, 'deepseek_v3');
  const isV3 = modelType === 'deepseek_v3';

  if ((j.hidden_act ?? 'silu') !== 'silu') r.fail('hidden_act', j.hidden_act, 'only "silu" is implemented');
  if (j.attention_bias === true) r.fail('attention_bias', j.attention_bias, 'attention projections have no bias in DeepSeek models');
  if ((j.moe_layer_freq ?? 1) !== 1) r.fail('moe_layer_freq', j.moe_layer_freq, 'only 1 (every layer after the dense ones) is implemented');
  if (j.rope_interleave === false) r.fail('rope_interleave', false, 'only interleaved RoPE is implemented');

  const maxPositionEmbeddings = r.int('max_position_embeddings', 4096);
  const rope = parseRope(j, r, source, maxPositionEmbeddings);
  const numHiddenLayers = r.int('num_hidden_layers');
  const nRoutedExperts = r.int('n_routed_experts');
  const nGroup = r.int('n_group', 1);
  const topkGroup = r.int('topk_group', 1);
  const numExpertsPerTok = r.int('num_experts_per_tok');
  const topkMethod = r.oneOf('topk_method', ['noaux_tc', 'greedy', 'group_limited_greedy'] as const, isV3 ? 'noaux_tc' : 'greedy');
  const scoringFunc = r.oneOf('scoring_func', ['sigmoid', 'softmax'] as const, isV3 ? 'sigmoid' : 'softmax');
  if (topkMethod === 'noaux_tc' && scoringFunc !== 'sigmoid') r.fail('scoring_func', scoringFunc, 'topk_method "noaux_tc" needs sigmoid scoring');
  if (nRoutedExperts % nGroup !== 0) r.fail('n_group', nGroup, `must divide n_routed_experts (${nRoutedExperts})`);
  if (topkGroup > nGroup) r.fail('topk_group', topkGroup, `must not exceed n_group (${nGroup})`);
  const keptExperts = topkMethod === 'greedy' ? nRoutedExperts : (nRoutedExperts / nGroup) * topkGroup;
  if (numExpertsPerTok > keptExperts) r.fail('num_experts_per_tok', numExpertsPerTok, `at most ${keptExperts} experts can be chosen`);
  if (topkMethod === 'noaux_tc' && nRoutedExperts / nGroup < 2) r.fail('n_group', nGroup, 'noaux_tc scores a group by its two best experts, so each group needs at least 2');

  const qkRopeHeadDim = r.int('qk_rope_head_dim');
  if (qkRopeHeadDim % 2 !== 0) r.fail('qk_rope_head_dim', qkRopeHeadDim, 'must be even (RoPE rotates pairs)');
  const qLoraRank = j.q_lora_rank === null || j.q_lora_rank === undefined ? null : r.int('q_lora_rank');

  const config: ModelConfig = {
    modelType,
    vocabSize: r.int('vocab_size'),
    hiddenSize: r.int('hidden_size'),
    intermediateSize: r.int('intermediate_size'),
    moeIntermediateSize: r.int('moe_intermediate_size'),
    numHiddenLayers,
    numAttentionHeads: r.int('num_attention_heads'),
    qLoraRank,
    kvLoraRank: r.int('kv_lora_rank'),
    qkNopeHeadDim: r.int('qk_nope_head_dim'),
    qkRopeHeadDim,
    vHeadDim: r.int('v_head_dim'),
    nRoutedExperts,
    nSharedExperts: r.int('n_shared_experts', 0, 0),
    numExpertsPerTok,
    nGroup,
    topkGroup,
    routedScalingFactor: r.num('routed_scaling_factor', 1),
    normTopkProb: r.bool('norm_topk_prob', isV3),
    scoringFunc,
    topkMethod,
    firstKDenseReplace: r.int('first_k_dense_replace', 0, 0),
    rmsNormEps: r.num('rms_norm_eps', 1e-6),
    ropeTheta: rope.theta,
    ropeScaling: rope.scaling,
    maxPositionEmbeddings,
    tieWordEmbeddings: r.bool('tie_word_embeddings', false),
    numNextnPredictLayers: r.int('num_nextn_predict_layers', 0, 0),
    fp8WeightBlock: parseQuantization(j, r),
    bosTokenId: parseTokenIds(j.bos_token_id, r, 'bos_token_id')[0] ?? null,
    eosTokenIds: parseTokenIds(j.eos_token_id, r, 'eos_token_id'),
  };
  if (config.firstKDenseReplace > numHiddenLayers) r.fail('first_k_dense_replace', config.firstKDenseReplace, `exceeds num_hidden_layers (${numHiddenLayers})`);
  if (config.rmsNormEps <= 0) r.fail('rms_norm_eps', config.rmsNormEps, 'must be positive');
  return config;
}

/** The inverse of parseConfig: the `config.json` object a checkpoint is saved with. */
export function configToJson(c: ModelConfig): Record<string, unknown> {
  const rope: Record<string, unknown> = { rope_theta: c.ropeTheta, rope_type: c.ropeScaling.type };
  if (c.ropeScaling.type === 'yarn') {
    Object.assign(rope, {
      factor: c.ropeScaling.factor,
      original_max_position_embeddings: c.ropeScaling.originalMaxPositionEmbeddings,
      beta_fast: c.ropeScaling.betaFast,
      beta_slow: c.ropeScaling.betaSlow,
      mscale: c.ropeScaling.mscale,
      mscale_all_dim: c.ropeScaling.mscaleAllDim,
    });
  }
  const json: Record<string, unknown> = {
    architectures: [c.modelType === 'deepseek_v3' ? 'DeepseekV3ForCausalLM' : 'DeepseekV2ForCausalLM'],
    model_type: c.modelType,
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    moe_intermediate_size: c.moeIntermediateSize,
    num_hidden_layers: c.numHiddenLayers,
    num_attention_heads: c.numAttentionHeads,
    num_key_value_heads: c.numAttentionHeads,
    q_lora_rank: c.qLoraRank,
    kv_lora_rank: c.kvLoraRank,
    qk_nope_head_dim: c.qkNopeHeadDim,
    qk_rope_head_dim: c.qkRopeHeadDim,
    v_head_dim: c.vHeadDim,
    head_dim: c.qkRopeHeadDim,
    n_routed_experts: c.nRoutedExperts,
    n_shared_experts: c.nSharedExperts,
    num_experts_per_tok: c.numExpertsPerTok,
    n_group: c.nGroup,
    topk_group: c.topkGroup,
    routed_scaling_factor: c.routedScalingFactor,
    norm_topk_prob: c.normTopkProb,
    scoring_func: c.scoringFunc,
    topk_method: c.topkMethod,
    first_k_dense_replace: c.firstKDenseReplace,
    rms_norm_eps: c.rmsNormEps,
    rope_parameters: rope,
    rope_interleave: true,
    max_position_embeddings: c.maxPositionEmbeddings,
    tie_word_embeddings: c.tieWordEmbeddings,
    num_nextn_predict_layers: c.numNextnPredictLayers,
    hidden_act: 'silu',
    attention_bias: false,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenIds.length === 1 ? c.eosTokenIds[0] : c.eosTokenIds,
    dtype: 'float32',
  };
  if (c.fp8WeightBlock) {
    json.quantization_config = { quant_method: 'fp8', fmt: 'e4m3', activation_scheme: 'dynamic', weight_block_size: c.fp8WeightBlock };
  }
  return json;
}
