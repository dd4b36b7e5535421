import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { applyChatTemplate, applyTokenizerChatTemplate, DEFAULT_CHAT_TEMPLATE, type ChatMessage } from "../../src/io/chat-template.js";
import {
  DEEPSEEK_ASSISTANT_TOKEN,
  DEEPSEEK_BOS_TOKEN,
  DEEPSEEK_EOS_TOKEN,
  DEEPSEEK_USER_TOKEN,
  loadTokenizer,
  Tokenizer,
} from "../../src/io/tokenizer.js";

// dist/test/io/ -> repository root -> ../shared/fixtures/bpe-tokenizer
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const fixtureDir = resolve(repoRoot, "..", "shared", "fixtures", "bpe-tokenizer");

const conversation: ChatMessage[] = [
  { role: "user", content: "What is 2+2?" },
  { role: "assistant", content: "4." },
];

test("a custom template with a loop and conditionals renders two messages", () => {
  const template =
    "{% for message in messages %}" +
    "{% if loop.first %}{{ bos_token }}{% endif %}" +
    "{% if message['role'] == 'user' %}[U] {{ message['content'] | trim }}\n" +
    "{% elif message['role'] == 'assistant' %}[A] {{ message['content'] }}{{ eos_token }}\n" +
    "{% endif %}" +
    "{% endfor %}" +
    "{% if add_generation_prompt %}[A] {% endif %}";
  const options = { bosToken: "<s>", eosToken: "</s>" };
  assert.equal(
    applyChatTemplate(template, [{ role: "user", content: "  Hi there " }, { role: "assistant", content: "Hello!" }], options),
    "<s>[U] Hi there\n[A] Hello!</s>\n",
  );
  assert.equal(
    applyChatTemplate(template, [{ role: "user", content: "Hi" }], { ...options, addGenerationPrompt: true }),
    "<s>[U] Hi\n[A] ",
  );
});

test("the default template produces DeepSeek-V3's format", () => {
  assert.equal(
    applyChatTemplate(DEFAULT_CHAT_TEMPLATE, conversation),
    `${DEEPSEEK_BOS_TOKEN}${DEEPSEEK_USER_TOKEN}What is 2+2?${DEEPSEEK_ASSISTANT_TOKEN}4.${DEEPSEEK_EOS_TOKEN}`,
  );
  assert.equal(
    applyChatTemplate(
      DEFAULT_CHAT_TEMPLATE,
      [
        { role: "system", content: "Be brief." },
        { role: "system", content: "Be kind." },
        { role: "user", content: "Hi" },
      ],
      { addGenerationPrompt: true },
    ),
    `${DEEPSEEK_BOS_TOKEN}Be brief.\n\nBe kind.${DEEPSEEK_USER_TOKEN}Hi${DEEPSEEK_ASSISTANT_TOKEN}`,
  );
});

test("the default template tokenizes with the fixture tokenizer: BOS/EOS are single ids", () => {
  const tok = loadTokenizer(fixtureDir);
  assert.equal(tok.chatTemplate, undefined); // so the default applies
  const text = applyTokenizerChatTemplate(tok, conversation);
  assert.ok(text.startsWith(DEEPSEEK_BOS_TOKEN) && text.endsWith(DEEPSEEK_EOS_TOKEN));
  const ids = tok.encode(text, { addSpecialTokens: false });
  assert.equal(ids[0], tok.bosTokenId);
  assert.equal(ids[ids.length - 1], tok.eosTokenId);
  assert.equal(ids.filter((id) => id === tok.bosTokenId).length, 1);
  assert.equal(ids.filter((id) => id === tok.eosTokenId).length, 1);
  assert.equal(tok.decode(ids), text);
});

test("with <｜User｜>/<｜Assistant｜> as added tokens every special token is a single id", () => {
  // The fixture vocabulary lacks DeepSeek's role tokens; add them the way DeepSeek-V3's
  // tokenizer.json does (ids after the base vocabulary).
  const json = JSON.parse(readFileSync(join(fixtureDir, "tokenizer.json"), "utf8")) as {
    added_tokens: { id: number; content: string; special: boolean; normalized: boolean }[];
  };
  const userId = 1024;
  const assistantId = 1025;
  for (const [id, content] of [
    [userId, DEEPSEEK_USER_TOKEN],
    [assistantId, DEEPSEEK_ASSISTANT_TOKEN],
  ] as const) {
    json.added_tokens.push({ id, content, special: false, normalized: true });
  }
  const tok = new Tokenizer(json);
  assert.equal(tok.vocabSize, 1026);
  const text = applyTokenizerChatTemplate(tok, [...conversation, { role: "user", content: "And 3+3?" }], {
    addGenerationPrompt: true,
  });
  const ids = tok.encode(text, { addSpecialTokens: false });
  const expected = [
    tok.bosTokenId!,
    userId,
    ...tok.encode("What is 2+2?"),
    assistantId,
    ...tok.encode("4."),
    tok.eosTokenId!,
    userId,
    ...tok.encode("And 3+3?"),
    assistantId,
  ];
  assert.deepEqual(ids, expected);
  assert.equal(tok.decode(ids), text);
});

test("templates that do not parse or raise while rendering give clear errors", () => {
  assert.throws(() => applyChatTemplate("{% for m in messages %}", conversation), /chat template does not parse/);
  assert.throws(
    () => applyChatTemplate("{% if messages[0]['role'] != 'system' %}{{ raise_exception('need a system prompt') }}{% endif %}", conversation),
    /chat template failed to render: need a system prompt/,
  );
});
