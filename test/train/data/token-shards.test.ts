import { test } from "node:test";
import assert from "node:assert/strict";
import { closeSync, ftruncateSync, mkdirSync, openSync, readdirSync, readFileSync, statSync, writeFileSync, writeSync } from "node:fs";
import { constants as bufferConstants } from "node:buffer";
import { join } from "node:path";
import { Random } from "../../../src/util/random.js";
import { TokenShard, tokenShardWidth, writeTokenShard } from "../../../src/train/data/token-shards.js";
import { ConcatTokenStore, type TokenStore } from "../../../src/train/data/token-store.js";
import { withTempDir } from "../../helpers/temp-dir.js";

const seed = Math.floor(Math.random() * 2 ** 32);
const random = new Random(seed);
const note = `(random seed ${seed})`;

function randomTokens(n: number, below: number): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = random.int(below);
  return out;
}

test("the width comes from the name: .u32.bin is uint32, .u16.bin and plain .bin are uint16", () => {
  assert.equal(tokenShardWidth("a/b.u32.bin"), "uint32");
  assert.equal(tokenShardWidth("a/b.U32.BIN"), "uint32");
  assert.equal(tokenShardWidth("a/b.u16.bin"), "uint16");
  assert.equal(tokenShardWidth("a/b.bin"), "uint16");
  assert.throws(() => tokenShardWidth("a/b.txt"), /not a token shard name/);
});

test("round trip, both widths, raw little-endian bytes, any range", () => {
  withTempDir("dsv3-shards-", (dir) => {
    for (const [name, below, bytes] of [
      ["s.u16.bin", 65536, 2],
      ["s.bin", 65536, 2],
      ["s.u32.bin", 2 ** 31, 4],
    ] as const) {
      const path = join(dir, name);
      const tokens = randomTokens(1000 + random.int(5000), below);
      tokens[0] = below - 1; // the largest id survives
      writeTokenShard(path, tokens);
      assert.equal(statSync(path).size, tokens.length * bytes);
      const raw = readFileSync(path);
      for (let i = 0; i < 20; i++) {
        const k = random.int(tokens.length);
        assert.equal(bytes === 2 ? raw.readUInt16LE(2 * k) : raw.readUInt32LE(4 * k), tokens[k], `${name} token ${k} ${note}`);
      }
      const shard = TokenShard.open(path);
      assert.equal(shard.length, tokens.length);
      assert.equal(shard.width, bytes === 2 ? "uint16" : "uint32");
      assert.deepEqual(shard.read(0, tokens.length), tokens);
      for (let i = 0; i < 50; i++) {
        const start = random.int(tokens.length + 1);
        const count = random.int(tokens.length - start + 1);
        assert.deepEqual(shard.read(start, count), tokens.subarray(start, start + count), `${name} [${start}, +${count}) ${note}`);
      }
      assert.throws(() => shard.read(tokens.length - 5, 6), RangeError);
      assert.throws(() => shard.read(-1, 2), RangeError);
      shard.close();
      assert.throws(() => shard.read(0, 1), /closed/);
    }
    // no temporary files left behind
    assert.deepEqual(readdirSync(dir).sort(), ["s.bin", "s.u16.bin", "s.u32.bin"]);
  });
});

test("writing: out-of-range tokens and a width the name contradicts are errors, and leave no file", () => {
  withTempDir("dsv3-shards-", (dir) => {
    assert.throws(() => writeTokenShard(join(dir, "a.u16.bin"), [1, 2, 65536]), /token 2 is 65536/);
    assert.throws(() => writeTokenShard(join(dir, "b.u32.bin"), [1, -1]), /token 1 is -1/);
    assert.throws(() => writeTokenShard(join(dir, "c.bin"), [1, 2.5]), /token 1 is 2.5/);
    assert.throws(() => writeTokenShard(join(dir, "d.bin"), [1, 2], "uint32"), /declares uint16/);
    assert.throws(() => writeTokenShard(join(dir, "e.txt"), [1, 2]), /not a token shard name/);
    assert.deepEqual(readdirSync(dir), []);
  });
});

test("writing replaces an existing shard atomically", () => {
  withTempDir("dsv3-shards-", (dir) => {
    const path = join(dir, "x.u32.bin");
    writeTokenShard(path, randomTokens(100, 1000));
    const shard = TokenShard.open(path); // an open reader keeps the old file
    const next = randomTokens(300, 1000);
    writeTokenShard(path, next);
    assert.equal(shard.length, 100);
    assert.equal(shard.read(0, 100).length, 100);
    shard.close();
    assert.deepEqual(TokenShard.open(path).read(0, 300), next);
  });
});

test("a size that is not a multiple of the width, a missing shard and a directory are clear errors", () => {
  withTempDir("dsv3-shards-", (dir) => {
    const odd16 = join(dir, "odd.bin");
    writeFileSync(odd16, Buffer.alloc(7));
    assert.throws(() => TokenShard.open(odd16), (err: Error) => err.message.includes(odd16) && /7 bytes, not a multiple of 2/.test(err.message));
    const odd32 = join(dir, "odd.u32.bin");
    writeFileSync(odd32, Buffer.alloc(10));
    assert.throws(() => TokenShard.open(odd32), (err: Error) => err.message.includes(odd32) && /10 bytes, not a multiple of 4/.test(err.message));
    const missing = join(dir, "missing.bin");
    assert.throws(() => TokenShard.open(missing), (err: Error) => err.message.includes("not found") && err.message.includes(missing));
    const folder = join(dir, "folder.bin");
    mkdirSync(folder);
    assert.throws(() => TokenShard.open(folder), (err: Error) => err.message.includes("not a file") && err.message.includes(folder));
  });
});

test("a shard far larger than a Buffer can hold is opened and read by offset", () => {
  withTempDir("dsv3-shards-", (dir) => {
    // A sparse file of 6 GiB: reading it whole is impossible (a Buffer holds at most 4 GiB),
    // so correct reads prove that only the requested bytes are read.
    const path = join(dir, "huge.u16.bin");
    const size = 6 * 2 ** 30;
    assert.ok(size > bufferConstants.MAX_LENGTH);
    const length = size / 2;
    const pieces: [number, Int32Array][] = [
      [0, randomTokens(1000, 65536)],
      [Math.floor(length / 2) + random.int(1000), randomTokens(5000, 65536)],
      [length - 777, randomTokens(777, 65536)],
    ];
    const fd = openSync(path, "w");
    ftruncateSync(fd, size);
    for (const [at, tokens] of pieces) {
      const bytes = Buffer.alloc(tokens.length * 2);
      tokens.forEach((t, i) => bytes.writeUInt16LE(t, 2 * i));
      writeSync(fd, bytes, 0, bytes.length, at * 2);
    }
    closeSync(fd);
    const shard = TokenShard.open(path);
    assert.equal(shard.length, length);
    for (const [at, tokens] of pieces) assert.deepEqual(shard.read(at, tokens.length), tokens, `at ${at} ${note}`);
    assert.deepEqual(shard.read(pieces[1][0] + 100, 10), pieces[1][1].subarray(100, 110));
    shard.close();
  });
});

/** A store that records every read it serves. */
class Recording implements TokenStore {
  reads: [number, number][] = [];
  constructor(private readonly inner: TokenStore) {}
  get length(): number {
    return this.inner.length;
  }
  read(start: number, count: number): Int32Array {
    this.reads.push([start, count]);
    return this.inner.read(start, count);
  }
}

test("shards concatenate: reads spanning shard boundaries, each shard read only where asked", () => {
  withTempDir("dsv3-shards-", (dir) => {
    const lengths = [1, 500, 3, 2000, 64, 999];
    const all: Int32Array[] = [];
    const shards = lengths.map((n, i) => {
      const wide = i % 2 === 1;
      const tokens = randomTokens(n, wide ? 200_000 : 65536);
      all.push(tokens);
      const path = join(dir, `part-${i}${wide ? ".u32" : ""}.bin`);
      writeTokenShard(path, tokens);
      return new Recording(TokenShard.open(path));
    });
    const expected = new Int32Array(lengths.reduce((a, b) => a + b, 0));
    let offset = 0;
    for (const t of all) {
      expected.set(t, offset);
      offset += t.length;
    }
    const store = new ConcatTokenStore(shards);
    assert.equal(store.length, expected.length);
    assert.deepEqual(store.read(0, expected.length), expected);
    for (let i = 0; i < 200; i++) {
      for (const s of shards) s.reads = [];
      const start = random.int(expected.length);
      const count = 1 + random.int(Math.min(1200, expected.length - start));
      assert.deepEqual(store.read(start, count), expected.subarray(start, start + count), `[${start}, +${count}) ${note}`);
      // every shard read lies inside the requested range, once per shard touched
      let base = 0;
      let readTotal = 0;
      shards.forEach((s, k) => {
        assert.ok(s.reads.length <= 1);
        for (const [from, n] of s.reads) {
          assert.ok(base + from >= start && base + from + n <= start + count, `shard ${k} read [${from}, +${n})`);
          readTotal += n;
        }
        base += s.length;
      });
      assert.equal(readTotal, count);
    }
    assert.throws(() => store.read(expected.length - 1, 2), RangeError);
    store.close(); // Recording has no close: nothing to do, and no error
    for (const s of shards) (s as unknown as { inner: TokenShard }).inner.close();
  });
});
