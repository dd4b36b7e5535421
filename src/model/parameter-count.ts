// Parameter counts and cache sizes derived from the configuration alone (dsv3 info).

import type { ModelConfig } from './config.js';

export interface ParameterCount {
  /** Every parameter of the main model (embedding and head included, MTP modules excluded). */
  total: number;
  /** Parameters one token passes through: all but the routed experts it is not sent to. */
  activatedPerToken: number;
  /** Parameters of the MTP modules (their embedding and head are shared with the main model). */
  mtp: number;
}

function attentionParams(c: ModelConfig): number {
  const d = c.hiddenSize, H = c.numAttentionHeads;
  const qk = c.qkNopeHeadDim + c.qkRopeHeadDim;
  const q = c.qLoraRank === null ? d * H * qk : d * c.qLoraRank + c.qLoraRank + c.qLoraRank * H * qk;
  const kv = d * (c.kvLoraRank + c.qkRopeHeadDim) + c.kvLoraRank + c.kvLoraRank * H * (c.qkNopeHeadDim + c.vHeadDim);
  return q + kv + H * c.vHeadDim * d;
}

function moeParams(c: ModelConfig, expertsCounted: number): number {
  const d = c.hiddenSize;
  const expert = 3 * d * c.moeIntermediateSize;
  const bias = c.topkMethod === 'noaux_tc' ? c.nRoutedExperts : 0;
  return c.nRoutedExperts * d + bias + expertsCounted * expert + c.nSharedExperts * expert;
}

export function countParameters(c: ModelConfig): ParameterCount {
  const d = c.hiddenSize;
  const norms = 2 * d;
  const dense = attentionParams(c) + norms + 3 * d * c.intermediateSize;
  const moeLayer = (experts: number) => attentionParams(c) + norms + moeParams(c, experts);
  const moeLayers = c.numHiddenLayers - c.firstKDenseReplace;
  const embedAndHead = c.vocabSize * d * (c.tieWordEmbeddings ? 1 : 2) + d;
  const total = embedAndHead + c.firstKDenseReplace * dense + moeLayers * moeLayer(c.nRoutedExperts);
  const activatedPerToken = embedAndHead + c.firstKDenseReplace * dense + moeLayers * moeLayer(c.numExpertsPerTok);
  const mtp = c.numNextnPredictLayers * (moeLayer(c.nRoutedExperts) + 2 * d + 2 * d * d + d);
  return { total, activatedPerToken, mtp };
}

/** Numbers cached per token over all layers: MLA's latent, and plain multi-head attention's keys and values. */
export function cacheValuesPerToken(c: ModelConfig): { mla: number; mha: number } {
  const mla = c.numHiddenLayers * (c.kvLoraRank + c.qkRopeHeadDim);
  const mha = c.numHiddenLayers * c.numAttentionHeads * (c.qkNopeHeadDim + c.qkRopeHeadDim + c.vHeadDim);
  return { mla, mha };
}
