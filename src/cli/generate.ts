// dsv3 generate: stream a continuation of a prompt, then report speed and cache size.

import { loadModel } from '../infer/language-model.js';
import { deviceFlag, deviceOption, numberFlag, stringFlag, UsageError, type Command } from './args.js';

function parseIds(flag: string): number[] {
  const ids = flag.split(',').map((s) => s.trim());
  if (ids.some((s) => !/^\d+$/.test(s))) throw new UsageError(`--prompt-ids: "${flag}" is not a comma-separated list of token ids`);
  return ids.map(Number);
}

export const generateCommand: Command = {
  name: 'generate',
  summary: 'generate text from a model directory',
  usage: `dsv3 generate --model DIR --prompt TEXT [options]

Prints the continuation as it is generated, then one line with tokens/s and the latent-cache
bytes per token.

  --model DIR            Hugging Face model directory (config.json, *.safetensors, tokenizer.json)
  --prompt TEXT          the prompt (text; needs tokenizer.json in DIR)
  --prompt-ids IDS       the prompt as comma-separated token ids instead (output printed as ids
                         when DIR has no tokenizer)
  --max-new-tokens N     tokens to generate at most (default 64)
  --temperature T        0 = greedy (default); > 0 samples from softmax(logits / T)
  --top-k K              sample among the K most likely tokens only (default: all)
  --top-p P              sample among the most likely tokens whose probability reaches P (default 1)
  --seed S               seed of the sampler (default 0)
  --chat                 wrap the prompt in the tokenizer's chat template as a user turn
  --speculative mtp      draft each next token with the MTP module and verify it with the main
                         model (needs MTP weights); prints the acceptance rate and plain decoding's speed
  --no-cache             recompute the whole sequence for every token instead of using the latent cache
  --device cpu|cuda|auto where to run (default auto: cuda when a GPU is usable)`,
  options: {
    model: { type: 'string' },
    prompt: { type: 'string' },
    'prompt-ids': { type: 'string' },
    'max-new-tokens': { type: 'string' },
    temperature: { type: 'string' },
    'top-k': { type: 'string' },
    'top-p': { type: 'string' },
    seed: { type: 'string' },
    chat: { type: 'boolean' },
    'no-cache': { type: 'boolean' },
    speculative: { type: 'string' },
    ...deviceOption,
  },
  async run(values) {
    const dir = stringFlag(values, 'model', true);
    const text = stringFlag(values, 'prompt');
    const idsFlag = stringFlag(values, 'prompt-ids');
    if ((text === undefined) === (idsFlag === undefined)) throw new UsageError('give exactly one of --prompt TEXT and --prompt-ids IDS');
    const ids = idsFlag === undefined ? undefined : parseIds(idsFlag);
    const opts = {
      maxNewTokens: numberFlag(values, 'max-new-tokens', { fallback: 64, min: 1, integer: true }),
      temperature: numberFlag(values, 'temperature', { fallback: 0, min: 0 }),
      topK: numberFlag(values, 'top-k', { fallback: 0, min: 0, integer: true }),
      topP: numberFlag(values, 'top-p', { fallback: 1, min: 0, max: 1 }),
      seed: numberFlag(values, 'seed', { fallback: 0, integer: true }),
      chat: values.chat === true,
      useCache: values['no-cache'] !== true,
    };
    if (opts.topP === 0) throw new UsageError('--top-p: 0 keeps no token; use a value in (0, 1]');
    const speculative = stringFlag(values, 'speculative');
    if (speculative !== undefined && speculative !== 'mtp') throw new UsageError(`--speculative: "${speculative}" is not a drafter (the one drafter is "mtp")`);
    if (speculative && !opts.useCache) throw new UsageError('--speculative needs the latent cache: drop --no-cache');
    const model = await loadModel(dir, { device: deviceFlag(values) });
    const tokenizer = model.tokenizer;
    if (!tokenizer && text !== undefined) throw new UsageError(`${dir} has no tokenizer.json, so a text prompt cannot be encoded: use --prompt-ids`);
    const stream = tokenizer?.createStreamDecoder({ skipSpecialTokens: true });
    process.stdout.write(text ?? (tokenizer ? tokenizer.decode(ids!) : ids!.join(' ')));
    const onToken = (t: number) => process.stdout.write(stream ? stream.push(t) : ` ${t}`);
    const result = model.generate(text ?? ids!, { ...opts, onToken, speculative: speculative === 'mtp' });
    process.stdout.write((stream?.flush() ?? '') + '\n');
    if ('drafted' in result) {
      const plain = model.generate(text ?? ids!, opts);
      const rate = (100 * result.accepted) / Math.max(1, result.drafted);
      console.log(`[speculative (MTP): ${rate.toFixed(1)}% of ${result.drafted} drafts accepted, ${result.decodeTokensPerSecond.toFixed(1)} tokens/s; plain decoding ${plain.decodeTokensPerSecond.toFixed(1)} tokens/s]`);
    }
    const cacheNote = opts.useCache ? `${result.cacheBytesPerToken} cache bytes/token` : 'no cache';
    console.log(
      `[${result.tokens.length} tokens (${result.stoppedBy}); prefill ${result.promptTokens.length} tokens in ${result.prefillSeconds.toFixed(3)} s; ` +
        `decode ${result.decodeTokensPerSecond.toFixed(1)} tokens/s; ${cacheNote}]`,
    );
  },
};
