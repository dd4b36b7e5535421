// The MLA inference cache (SPEC §2): per layer only the normalised latent c_kv and the roped
// shared key k_pe, kv_lora + rope numbers per token — not per-head keys and values.

import type { Backend } from '../backend/backend.js';
import type { ModelConfig } from '../model/config.js';
import type { LatentCacheLayer } from '../model/mla.js';

export class LatentCache {
  readonly layers: LatentCacheLayer[] = [];
  /** Tokens written so far (the same for every sequence of the batch). */
  length = 0;

  /** `layers`: how many attention layers it serves (default the model's; an MTP module has one). */
  constructor(private readonly backend: Backend, config: ModelConfig, readonly batch: number, readonly capacity: number, layers = config.numHiddenLayers) {
    for (let l = 0; l < layers; l++) {
      this.layers.push({
        ckv: backend.zeros([batch, capacity, config.kvLoraRank]),
        kpe: backend.zeros([batch, capacity, config.qkRopeHeadDim]),
      });
    }
  }

  /** Cached numbers per token per layer. */
  static valuesPerTokenPerLayer(config: ModelConfig): number {
    return config.kvLoraRank + config.qkRopeHeadDim;
  }

  /** Cache bytes per token over all layers when stored in `dtype`. */
  static bytesPerToken(config: ModelConfig, dtype: string): number {
    const bytes = dtype === 'f64' ? 8 : dtype === 'bf16' ? 2 : 4;
    return config.numHiddenLayers * LatentCache.valuesPerTokenPerLayer(config) * bytes;
  }

  free(): void {
    for (const layer of this.layers) {
      this.backend.free(layer.ckv);
      this.backend.free(layer.kpe);
    }
    this.layers.length = 0;
  }
}
