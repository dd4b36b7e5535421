// Pre-tokenized binary shards: a file of raw little-endian token ids and nothing else (no
// header), so any tool can write one (numpy: `ids.astype("<u2").tofile("x.u16.bin")`).
//
// The width comes from the file name:
//   *.u16.bin   uint16 ids (vocabularies up to 65,536 tokens)
//   *.u32.bin   uint32 ids (ids up to 2^31 - 1, since they are returned as Int32Array)
//   *.bin       anything else ending in .bin: uint16
// Opening a shard reads only its size; every read is one positional read of the bytes asked for,
// so shards larger than memory are fine.

import { closeSync, existsSync, fstatSync, fsyncSync, openSync, readSync, renameSync, rmSync, writeSync } from "node:fs";
import { endianness } from "node:os";

export type TokenWidth = "uint16" | "uint32";

export const TOKEN_WIDTH_BYTES: Record<TokenWidth, number> = { uint16: 2, uint32: 4 };

const MAX_TOKEN: Record<TokenWidth, number> = { uint16: 0xffff, uint32: 0x7fffffff };
const LITTLE_ENDIAN_HOST = endianness() === "LE";
const WRITE_CHUNK_TOKENS = 1 << 20;

/** Whether a path names a token shard (ends in .bin, case-insensitive). */
export function isTokenShardPath(path: string): boolean {
  return path.toLowerCase().endsWith(".bin");
}

/** The token width a shard's name declares: .u32.bin is uint32; .u16.bin and other .bin are uint16. */
export function tokenShardWidth(path: string): TokenWidth {
  const lower = path.toLowerCase();
  if (!lower.endsWith(".bin")) throw new Error(`not a token shard name (expected *.bin, *.u16.bin or *.u32.bin): ${path}`);
  return lower.endsWith(".u32.bin") ? "uint32" : "uint16";
}

export class TokenShard {
  /** Number of tokens in the file. */
  readonly length: number;
  readonly bytesPerToken: number;
  private fd: number | null;

  private constructor(readonly path: string, readonly width: TokenWidth, fd: number, length: number) {
    this.fd = fd;
    this.length = length;
    this.bytesPerToken = TOKEN_WIDTH_BYTES[width];
  }

  /** Open a shard: checks the name and that the size is a whole number of tokens; reads no tokens. */
  static open(path: string): TokenShard {
    const width = tokenShardWidth(path);
    if (!existsSync(path)) throw new Error(`token shard not found: ${path}`);
    const fd = openSync(path, "r");
    try {
      const stat = fstatSync(fd);
      if (!stat.isFile()) throw new Error(`token shard is not a file: ${path}`);
      const bytes = TOKEN_WIDTH_BYTES[width];
      if (stat.size % bytes !== 0) {
        throw new Error(`token shard ${path} has ${stat.size} bytes, not a multiple of ${bytes} (${width} tokens, from its name)`);
      }
      return new TokenShard(path, width, fd, stat.size / bytes);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** Tokens [start, start + count) as int32, from one positional read. */
  read(start: number, count: number): Int32Array {
    if (this.fd === null) throw new Error(`token shard is closed: ${this.path}`);
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > this.length) {
      throw new RangeError(`token shard ${this.path}: cannot read ${count} tokens at ${start} (it holds ${this.length})`);
    }
    const out = new Int32Array(count);
    if (count === 0) return out;
    const byteLength = count * this.bytesPerToken;
    const bytes = new Uint8Array(byteLength); // a fresh ArrayBuffer: aligned for the typed views below
    let done = 0;
    while (done < byteLength) {
      // A regular file returns everything in one read; the loop only covers a short read.
      const n = readSync(this.fd, bytes, done, byteLength - done, start * this.bytesPerToken + done);
      if (n === 0) throw new Error(`token shard ${this.path} ended early (was it truncated while open?)`);
      done += n;
    }
    if (this.width === "uint16") {
      if (LITTLE_ENDIAN_HOST) out.set(new Uint16Array(bytes.buffer, 0, count));
      else {
        const view = new DataView(bytes.buffer);
        for (let i = 0; i < count; i++) out[i] = view.getUint16(2 * i, true);
      }
    } else {
      const view = new DataView(bytes.buffer);
      const words = LITTLE_ENDIAN_HOST ? new Uint32Array(bytes.buffer, 0, count) : null;
      for (let i = 0; i < count; i++) {
        const v = words !== null ? words[i] : view.getUint32(4 * i, true);
        if (v > MAX_TOKEN.uint32) throw new Error(`token shard ${this.path}: token ${start + i} is ${v}, above the largest id ${MAX_TOKEN.uint32}`);
        out[i] = v;
      }
    }
    return out;
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

let tempCounter = 0;

/**
 * Write tokens as a shard. The width defaults to the one the name declares and must agree with
 * it (a uint32 shard needs a *.u32.bin name). The file is written under a temporary name beside
 * it, flushed, then renamed, so a reader never sees a partial shard.
 */
export function writeTokenShard(path: string, tokens: ArrayLike<number>, width: TokenWidth = tokenShardWidth(path)): void {
  const declared = tokenShardWidth(path);
  if (width !== declared) {
    throw new Error(`token shard ${path}: its name declares ${declared} tokens but ${width} was asked (name ${width} shards *.${width === "uint32" ? "u32" : "u16"}.bin)`);
  }
  const max = MAX_TOKEN[width];
  const bytesPerToken = TOKEN_WIDTH_BYTES[width];
  const temp = `${path}.${process.pid}.${tempCounter++}.tmp`;
  const fd = openSync(temp, "w");
  try {
    const chunk = new Uint8Array(Math.min(tokens.length, WRITE_CHUNK_TOKENS) * bytesPerToken);
    const view = new DataView(chunk.buffer);
    for (let base = 0; base < tokens.length; base += WRITE_CHUNK_TOKENS) {
      const n = Math.min(WRITE_CHUNK_TOKENS, tokens.length - base);
      for (let i = 0; i < n; i++) {
        const t = tokens[base + i];
        if (!Number.isInteger(t) || t < 0 || t > max) {
          throw new Error(`token shard ${path}: token ${base + i} is ${t}, not an integer in [0, ${max}] (${width})`);
        }
        if (width === "uint16") view.setUint16(2 * i, t, true);
        else view.setUint32(4 * i, t, true);
      }
      let done = 0;
      const byteLength = n * bytesPerToken;
      while (done < byteLength) done += writeSync(fd, chunk, done, byteLength - done);
    }
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(temp, { force: true });
    throw err;
  }
  closeSync(fd);
  renameSync(temp, path);
}
