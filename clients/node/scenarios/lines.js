"use strict";
// How a scenario talks to the test that runs it: JSON lines. Events go to
// stdout as they happen (the test waits on them instead of sleeping);
// commands come from stdin, one JSON object a line; flags are `--name value`.

const readline = require("node:readline");

const COMMAND_LINE_BYTES_MAX = 64 * 1024;

function emit(event, data = {}) {
  process.stdout.write(`${JSON.stringify({ event, ...data })}\n`);
}

// Flags as { camelCaseName: string }, with `defaults` for the missing ones.
function parseFlags(argv, defaults) {
  const flags = { ...defaults };
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith("--") || argv[i + 1] === undefined) {
      throw new Error(`flags are --name value pairs, not ${argv.slice(i).join(" ")}`);
    }
    const name = argv[i].slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(name in defaults)) {
      throw new Error(`unknown flag ${argv[i]}`);
    }
    flags[name] = argv[i + 1];
  }
  return flags;
}

// Calls onCommand(object) for each stdin line; a line over the bound or not
// JSON fails the run.
function onCommands(onCommand, onError) {
  const lines = readline.createInterface({ input: process.stdin });
  lines.on("line", (line) => {
    try {
      if (line.length > COMMAND_LINE_BYTES_MAX) {
        throw new Error(`a command line over ${COMMAND_LINE_BYTES_MAX} bytes`);
      }
      if (line.trim() !== "") {
        onCommand(JSON.parse(line));
      }
    } catch (error) {
      onError(error);
    }
  });
  return lines;
}

// Runs main(flags) under a watchdog: exit 0 after it resolves, 1 with the
// reason when it fails, 2 when it takes longer than --timeout-ms.
function runScenario(name, main, defaults) {
  let flags;
  try {
    flags = parseFlags(process.argv.slice(2), { timeoutMs: "60000", ...defaults });
  } catch (error) {
    console.error(`${name}: ${error.message}`);
    process.exit(1);
  }
  const watchdog = setTimeout(() => {
    console.error(`${name}: not done within ${flags.timeoutMs} ms`);
    process.exit(2);
  }, Number(flags.timeoutMs));
  main(flags).then(
    () => {
      clearTimeout(watchdog);
      process.exit(0);
    },
    (error) => {
      console.error(`${name} failed: ${error.stack || error}`);
      process.exit(1);
    },
  );
}

module.exports = { emit, onCommands, runScenario };
