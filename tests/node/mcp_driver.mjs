// A driver of `orchfs mcp` through the official MCP TypeScript SDK client,
// for tests/fs/test_mcp.py.  The test sends one command per line on stdin and
// reads one JSON reply per line on stdout:
//   {"op": "connect", "command": PATH, "args": [...]}  -> server version, capabilities, instructions
//   {"op": "listTools"}                                -> {tools, schemaErrors: {tool: [messages]}}
//   {"op": "callTool", "name": N, "arguments": {...}}  -> the SDK's CallToolResult
//   {"op": "ping"}                                     -> the SDK's ping result
//   {"op": "close"}                                    -> {} and exit
// A command that throws replies {"thrown": message}.  Every input schema is
// compiled by Ajv in strict mode as JSON Schema draft-07 and as 2020-12, and
// the example it carries must validate against it.
import readline from 'node:readline';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import Ajv from 'ajv';
import Ajv2020 from 'ajv/dist/2020.js';

let client = null;

function schemaErrors(tool) {
  const errors = [];
  for (const [draft, AjvClass] of [['draft-07', Ajv], ['2020-12', Ajv2020]]) {
    const ajv = new AjvClass({ strict: true, allErrors: true });
    let validate;
    try {
      validate = ajv.compile(tool.inputSchema);
    } catch (e) {
      errors.push(`${draft}: does not compile: ${e.message}`);
      continue;
    }
    const examples = tool.inputSchema.examples || [];
    if (examples.length === 0) errors.push(`${draft}: no example`);
    for (const ex of examples) {
      if (!validate(ex)) errors.push(`${draft}: example ${JSON.stringify(ex)}: ${ajv.errorsText(validate.errors)}`);
    }
  }
  return errors;
}

async function run(cmd) {
  switch (cmd.op) {
    case 'connect': {
      client = new Client({ name: 'orchfs-test', version: '1.0.0' }, { capabilities: {} });
      const transport = new StdioClientTransport({
        command: cmd.command,
        args: cmd.args,
        env: { ...process.env },
        stderr: 'inherit',
      });
      await client.connect(transport);
      return {
        serverVersion: client.getServerVersion(),
        capabilities: client.getServerCapabilities(),
        instructions: client.getInstructions(),
      };
    }
    case 'listTools': {
      const { tools, nextCursor } = await client.listTools();
      const errors = {};
      for (const t of tools) {
        const e = schemaErrors(t);
        if (e.length) errors[t.name] = e;
      }
      return { tools, nextCursor, schemaErrors: errors };
    }
    case 'callTool':
      return await client.callTool({ name: cmd.name, arguments: cmd.arguments });
    case 'ping':
      return await client.ping();
    case 'close':
      await client.close();
      return {};
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  let reply;
  try {
    reply = await run(cmd);
  } catch (e) {
    reply = { thrown: String(e && e.message ? e.message : e), code: e && e.code };
  }
  process.stdout.write(JSON.stringify(reply ?? null) + '\n');
  if (cmd.op === 'close') break;
}
process.exit(0);
