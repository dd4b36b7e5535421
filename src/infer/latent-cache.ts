// The MLA inference cache (SPEC §2): per layer only the normalised latent c_kv and the roped
// shared key k_pe, kv_lora + rope numbers per token — not per-head keys and values.

import type { Backend } from '../backend/backend.js';
import type { ModelConfig } from '../model/config.js';
import type { LatentCacheLayer } from '../model/mla.js';

export class LatentCache {
  readonly layers: LatentCacheLayer[] = [];
  /** Tokens written so far (the same for every sequence of the batch). */
  length = 0;

  constructor(private readonly backend: Backend, config: ModelConfig, readonly batch: number, readonly capacity: number) {
    for (let l = 0; l < config.numHiddenLayers; l++) {
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

  free(): void {
    for (const layer of this.layers) {
      this.backend.free(layer.ckv);
      this.backend.free(layer.kpe);
    }
    this.layers.length = 0;
  }
}
