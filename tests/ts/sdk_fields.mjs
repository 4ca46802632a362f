// The request fields of the TypeScript SDK's params types, read with the
// TypeScript compiler from the SDK's .d.ts files: for each root type, every
// field path (names joined by ".", through arrays and unions) it can reach.
// Run by tests/test_sdk_fields_ts.py, which compares them with the Python SDK's.
//
// usage: node sdk_fields.mjs  -> JSON {root: [path, ...]} on stdout

import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const ts = require('typescript');
const here = path.dirname(fileURLToPath(import.meta.url));
const sdk = path.join(here, 'node_modules', '@anthropic-ai', 'sdk');

const ROOTS = {
  messages: ['resources/messages/messages.d.ts', 'MessageCreateParamsNonStreaming'],
  count_tokens: ['resources/messages/messages.d.ts', 'MessageCountTokensParams'],
  batches: ['resources/messages/batches.d.ts', 'BatchCreateParams'],
  'beta.messages': ['resources/beta/messages/messages.d.ts', 'MessageCreateParamsNonStreaming'],
  'beta.count_tokens': ['resources/beta/messages/messages.d.ts', 'MessageCountTokensParams'],
  'beta.batches': ['resources/beta/messages/batches.d.ts', 'BatchCreateParams'],
};
const MAX_DEPTH = 8;

const files = [...new Set(Object.values(ROOTS).map(([file]) => path.join(sdk, file)))];
const program = ts.createProgram(files, { strict: true, noEmit: true, skipLibCheck: true });
const checker = program.getTypeChecker();

function fromSdk(type) {
  const symbol = type.aliasSymbol ?? type.getSymbol();
  const declarations = symbol?.getDeclarations() ?? [];
  return declarations.some((d) => d.getSourceFile().fileName.startsWith(sdk));
}

// The object types a field's type leads to (through unions, arrays, nullability).
function objects(type) {
  if (type.isUnion()) return type.types.flatMap(objects);
  if (checker.isArrayType(type) || checker.isTupleType(type)) {
    return checker.getTypeArguments(type).flatMap(objects);
  }
  const name = type.getSymbol()?.getName();
  if ((name === 'Iterable' || name === 'ReadonlyArray') && type.typeArguments) {
    return type.typeArguments.flatMap(objects);
  }
  if (!(type.flags & ts.TypeFlags.Object)) return [];
  // Record<string, X> and { [key: string]: X }: the values' types.
  const values = checker.getIndexTypeOfType(type, ts.IndexKind.String);
  if (!fromSdk(type) || (values && checker.getPropertiesOfType(type).length === 0)) {
    return values ? objects(values) : [];
  }
  return [type];
}

function walk(type, prefix, stack, out) {
  if (stack.includes(type) || stack.length >= MAX_DEPTH) return;
  for (const prop of checker.getPropertiesOfType(type)) {
    const where = prefix ? `${prefix}.${prop.getName()}` : prop.getName();
    out.add(where);
    const declaration = prop.valueDeclaration ?? prop.getDeclarations()?.[0];
    const propType = checker.getTypeOfSymbolAtLocation(prop, declaration);
    for (const inner of objects(propType)) walk(inner, where, [...stack, type], out);
  }
}

const result = {};
for (const [root, [file, name]] of Object.entries(ROOTS)) {
  const source = program.getSourceFile(path.join(sdk, file));
  const moduleSymbol = checker.getSymbolAtLocation(source);
  const symbol = checker.getExportsOfModule(moduleSymbol).find((s) => s.getName() === name);
  if (!symbol) throw new Error(`${file}: no export ${name}`);
  const out = new Set();
  walk(checker.getDeclaredTypeOfSymbol(symbol), '', [], out);
  result[root] = [...out].sort();
}
process.stdout.write(JSON.stringify(result));
