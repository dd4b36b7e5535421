// A checkpoint whose weights are FP8 E4M3 with 128×128 weight_scale_inv blocks (quantized here,
// from the fixture, with our own quantizer) gives the logits of the same model with the
// dequantized weights in FP32.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { CpuBackend } from '../../src/backend/cpu/cpu-backend.js';
import { dequantizeWeightBlocks128, quantizeWeightBlocks128 } from '../../src/fp8/quantize.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import { encodeFromFloat } from '../../src/tensor/dtypes.js';
import { loadPretrained } from '../../src/model/load.js';
import { tinyModelDir } from '../shared-paths.js';

/** The weights SPEC §1 stores in FP8: attention, MLP and expert projections (not embeddings, head, norms, router). */
function isQuantized(name: string): boolean {
  return /\.(q_a_proj|q_b_proj|q_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$/.test(name);
}

test('an FP8 block-scaled checkpoint loads with the logits of its dequantized twin', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dsv3-fp8-'));
  const twin = fs.mkdtempSync(path.join(os.tmpdir(), 'dsv3-fp8-twin-'));
  try {
    const src = SafetensorsFile.open(path.join(tinyModelDir, 'model.safetensors'));
    const fp8: Parameters<typeof writeSafetensors>[1] = [];
    const dequantized: Parameters<typeof writeSafetensors>[1] = [];
    let quantizedCount = 0;
    for (const name of src.names()) {
      const { shape } = src.info(name);
      const values = src.readFloat32(name);
      if (!isQuantized(name)) {
        const entry = { name, dtype: 'F32' as const, shape, data: encodeFromFloat('F32', values) };
        fp8.push(entry);
        dequantized.push(entry);
        continue;
      }
      const [rows, cols] = shape;
      const { codes, scaleInv } = quantizeWeightBlocks128(values, rows, cols);
      fp8.push({ name, dtype: 'F8_E4M3', shape, data: codes });
      fp8.push({ name: `${name}_scale_inv`, dtype: 'F32', shape: [Math.ceil(rows / 128), Math.ceil(cols / 128)], data: encodeFromFloat('F32', scaleInv) });
      dequantized.push({ name, dtype: 'F32', shape, data: encodeFromFloat('F32', dequantizeWeightBlocks128(codes, scaleInv, rows, cols)) });
      quantizedCount++;
    }
    src.close();
    assert.ok(quantizedCount > 20);
    const config = JSON.parse(fs.readFileSync(path.join(tinyModelDir, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, quantization_config: { quant_method: 'fp8', fmt: 'e4m3', activation_scheme: 'dynamic', weight_block_size: [128, 128] } }));
    fs.writeFileSync(path.join(twin, 'config.json'), JSON.stringify(config));
    writeSafetensors(path.join(dir, 'model.safetensors'), fp8);
    writeSafetensors(path.join(twin, 'model.safetensors'), dequantized);

    const b = new CpuBackend('f32');
    const a = loadPretrained(dir, b);
    assert.deepEqual(a.config.fp8WeightBlock, [128, 128]);
    const c = loadPretrained(twin, b);
    const ids = Int32Array.from({ length: 2 * 12 }, () => Math.floor(Math.random() * config.vocab_size));
    const la = b.download(a.model.logits(ids, 2, 12));
    const lc = b.download(c.model.logits(ids, 2, 12));
    assert.deepEqual(la, lc);
    // and quantization really changed the weights: the original model's logits differ
    const orig = b.download(loadPretrained(tinyModelDir, b).model.logits(ids, 2, 12));
    assert.ok(orig.some((v, i) => v !== la[i]));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(twin, { recursive: true, force: true });
  }
});
