// Chat templates: Jinja templates from tokenizer_config.json rendered through @huggingface/jinja,
// with a short DeepSeek-V3-style default for tokenizers that carry none (e.g. ones we trained).

import { Template } from "@huggingface/jinja";
import {
  DEEPSEEK_ASSISTANT_TOKEN,
  DEEPSEEK_BOS_TOKEN,
  DEEPSEEK_EOS_TOKEN,
  DEEPSEEK_USER_TOKEN,
  type Tokenizer,
} from "./tokenizer.js";

export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

export interface ChatTemplateOptions {
  /** Append the opening of an assistant turn so the model writes the reply. Default false. */
  addGenerationPrompt?: boolean;
  /** Value of `bos_token` inside the template. Default DeepSeek's BOS. */
  bosToken?: string;
  /** Value of `eos_token` inside the template. Default DeepSeek's EOS. */
  eosToken?: string;
}

/**
 * DeepSeek-V3's conversation format without its tool-calling branches:
 *   BOS + system prompts (joined by a blank line)
 *   + for each turn: "<｜User｜>" + user text, or "<｜Assistant｜>" + reply + EOS
 *   + "<｜Assistant｜>" when a generation prompt is asked for.
 */
export const DEFAULT_CHAT_TEMPLATE =
  "{%- set ns = namespace(system='', first=true) -%}" +
  "{%- for message in messages -%}" +
  "{%- if message['role'] == 'system' -%}" +
  "{%- if ns.first -%}{%- set ns.system = message['content'] -%}{%- set ns.first = false -%}" +
  "{%- else -%}{%- set ns.system = ns.system + '\\n\\n' + message['content'] -%}{%- endif -%}" +
  "{%- endif -%}" +
  "{%- endfor -%}" +
  "{{ bos_token }}{{ ns.system }}" +
  "{%- for message in messages -%}" +
  `{%- if message['role'] == 'user' -%}{{ '${DEEPSEEK_USER_TOKEN}' + message['content'] }}` +
  `{%- elif message['role'] == 'assistant' -%}{{ '${DEEPSEEK_ASSISTANT_TOKEN}' + message['content'] + eos_token }}` +
  "{%- endif -%}" +
  "{%- endfor -%}" +
  `{%- if add_generation_prompt -%}{{ '${DEEPSEEK_ASSISTANT_TOKEN}' }}{%- endif -%}`;

// Parsing is the expensive part; a server renders the same template for every request.
const compiled = new Map<string, Template>();

function compile(template: string): Template {
  let parsed = compiled.get(template);
  if (parsed === undefined) {
    try {
      parsed = new Template(template);
    } catch (err) {
      throw new Error(`chat template does not parse: ${(err as Error).message}`);
    }
    compiled.set(template, parsed);
  }
  return parsed;
}

/** Render `messages` with a Jinja chat template (the variables transformers passes to it). */
export function applyChatTemplate(template: string, messages: ChatMessage[], options: ChatTemplateOptions = {}): string {
  const parsed = compile(template);
  try {
    return parsed.render({
      messages,
      add_generation_prompt: options.addGenerationPrompt ?? false,
      bos_token: options.bosToken ?? DEEPSEEK_BOS_TOKEN,
      eos_token: options.eosToken ?? DEEPSEEK_EOS_TOKEN,
    });
  } catch (err) {
    throw new Error(`chat template failed to render: ${(err as Error).message}`);
  }
}

/**
 * Render with the tokenizer's own template (or the default) and its BOS/EOS strings. The text
 * already holds BOS, so tokenize it with `encode(text, { addSpecialTokens: false })`.
 */
export function applyTokenizerChatTemplate(
  tokenizer: Tokenizer,
  messages: ChatMessage[],
  options: { addGenerationPrompt?: boolean } = {},
): string {
  return applyChatTemplate(tokenizer.chatTemplate ?? DEFAULT_CHAT_TEMPLATE, messages, {
    addGenerationPrompt: options.addGenerationPrompt,
    bosToken: tokenizer.bosToken ?? "",
    eosToken: tokenizer.eosToken ?? "",
  });
}
