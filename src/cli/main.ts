#!/usr/bin/env node
// The dsv3 command line: one file per command; this one dispatches and turns every failure
// into one line on stderr and a non-zero exit (DSV3_DEBUG=1 shows the stack).

import { UsageError, parseCommandArgs, type Command } from './args.js';
import { evalCommand } from './eval.js';
import { generateCommand } from './generate.js';
import { infoCommand } from './info.js';
import { tokenizerCommand } from './tokenizer.js';
import { trainCommand } from './train.js';

const commands: Command[] = [trainCommand, generateCommand, evalCommand, infoCommand, tokenizerCommand];

function help(): string {
  const lines = commands.map((c) => `  ${c.name.padEnd(10)} ${c.summary}`);
  return `dsv3: train and serve DeepSeek-V3-architecture models\n\nUsage: dsv3 <command> [options]\n\nCommands:\n${lines.join('\n')}\n\nRun dsv3 <command> --help for a command's options.`;
}

async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    console.log(help());
    return;
  }
  const cmd = commands.find((c) => c.name === name);
  if (!cmd) throw new UsageError(`unknown command "${name}" (commands: ${commands.map((c) => c.name).join(', ')})`);
  const { values, positionals } = parseCommandArgs(cmd, rest);
  if (values.help) {
    console.log(cmd.usage);
    return;
  }
  if (positionals.length > 0 && !cmd.subcommands) throw new UsageError(`${cmd.name}: unexpected argument "${positionals[0]}" (see dsv3 ${cmd.name} --help)`);
  await cmd.run(values, positionals);
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (e: unknown) => {
    const err = e instanceof Error ? e : new Error(String(e));
    if (process.env.DSV3_DEBUG) console.error(err.stack);
    console.error(`dsv3: ${err.message.split('\n')[0]}`);
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
