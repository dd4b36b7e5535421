// Command-line parsing on node:util's parseArgs (strict: an unknown flag is an error), with
// typed readers that reject malformed numbers with a message naming the flag.

import { parseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {}

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface Command {
  name: string;
  summary: string;
  usage: string;
  options: OptionSpec;
  /** Verbs that may follow the command name (`dsv3 tokenizer train`); without, positionals are an error. */
  subcommands?: string[];
  run(values: Record<string, string | boolean | string[] | undefined>, positionals: string[]): Promise<void>;
}

export function parseCommandArgs(cmd: Command, argv: string[]): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args: argv, options: { ...cmd.options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
    return { values: values as Record<string, string | boolean | string[] | undefined>, positionals };
  } catch (e) {
    // parseArgs' messages name the flag; drop its advice about '--' which does not apply here.
    const msg = (e as Error).message.split('. To specify')[0];
    throw new UsageError(`${cmd.name}: ${msg} (see dsv3 ${cmd.name} --help)`);
  }
}

export function stringFlag(values: Record<string, unknown>, name: string, required: true): string;
export function stringFlag(values: Record<string, unknown>, name: string, required?: false): string | undefined;
export function stringFlag(values: Record<string, unknown>, name: string, required = false): string | undefined {
  const v = values[name];
  if (v === undefined && required) throw new UsageError(`missing required flag --${name}`);
  return v as string | undefined;
}

/** A numeric flag within [min, max]; integers only when `integer`. */
export function numberFlag(values: Record<string, unknown>, name: string, opts: { fallback?: number; min?: number; max?: number; integer?: boolean } = {}): number | undefined {
  const raw = values[name];
  if (raw === undefined) return opts.fallback;
  const v = Number(raw);
  if (typeof raw !== 'string' || raw.trim() === '' || !Number.isFinite(v)) throw new UsageError(`--${name}: "${String(raw)}" is not a number`);
  if (opts.integer && !Number.isInteger(v)) throw new UsageError(`--${name}: "${raw}" is not an integer`);
  if (opts.min !== undefined && v < opts.min) throw new UsageError(`--${name}: ${v} is below ${opts.min}`);
  if (opts.max !== undefined && v > opts.max) throw new UsageError(`--${name}: ${v} is above ${opts.max}`);
  return v;
}

export function deviceFlag(values: Record<string, unknown>): 'cpu' | 'cuda' | 'auto' {
  const d = (values.device as string | undefined) ?? 'auto';
  if (d !== 'cpu' && d !== 'cuda' && d !== 'auto') throw new UsageError(`--device: "${d}" is not one of cpu, cuda, auto`);
  return d;
}

export const deviceOption: OptionSpec = { device: { type: 'string' } };
