// The official TypeScript SDK against a running parley.
// Usage: node sdk_test.mjs BASE_URL API_KEY MODEL [scripted|model]
// Prints one line per check and exits non-zero on the first failure.
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";

const [baseURL, apiKey, model, kind] = process.argv.slice(2);
const client = new Anthropic({ baseURL, apiKey, maxRetries: 0 });
const weather = {
  name: "get_weather",
  description: "Weather for a city",
  input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};

async function check(name, fn) {
  await fn();
  console.log(`ok - ${name}`);
}

await check("messages.create", async () => {
  const message = await client.messages.create({
    model, max_tokens: 20, messages: [{ role: "user", content: "hello there" }],
  });
  assert.equal(message.type, "message");
  assert.match(message.id, /^msg_/);
  assert.equal(message.content[0].type, "text");
  assert.ok(["end_turn", "max_tokens"].includes(message.stop_reason));
  if (kind === "scripted") assert.equal(message.content[0].text, "hello there");
});

await check("messages.stream().finalMessage()", async () => {
  const stream = client.messages.stream({
    model, max_tokens: 20, messages: [{ role: "user", content: "stream this please" }],
  });
  let text = "";
  stream.on("text", (piece) => { text += piece; });
  const final = await stream.finalMessage();
  assert.equal(final.content[0].text, text);
  assert.ok(final.usage.output_tokens > 0);
});

await check("tools: forced call, create and stream", async () => {
  // Greedy: at temperature 1 the tiny model sometimes writes the city string until
  // max_tokens, and a cut-off call has no input to check.
  const request = {
    model, max_tokens: 200, temperature: 0, tools: [weather],
    tool_choice: { type: "tool", name: "get_weather", disable_parallel_tool_use: true },
    messages: [{ role: "user", content: "weather in Paris" }],
  };
  const message = await client.messages.create(request);
  const call = message.content.find((b) => b.type === "tool_use");
  assert.ok(call, JSON.stringify(message.content));
  assert.match(call.id, /^toolu_/);
  assert.equal(typeof call.input.city, "string");
  assert.equal(message.stop_reason, "tool_use");
  const final = await client.messages.stream(request).finalMessage();
  const streamed = final.content.find((b) => b.type === "tool_use");
  assert.equal(typeof streamed.input.city, "string");
});

await check("messages.countTokens", async () => {
  const messages = [{ role: "user", content: "count me" }];
  const counted = await client.messages.countTokens({ model, messages });
  const created = await client.messages.create({ model, max_tokens: 1, messages });
  assert.equal(counted.input_tokens, created.usage.input_tokens);
});

await check("models.list auto-pagination and retrieve", async () => {
  const all = (await client.models.list({ limit: 1000 })).data.map((m) => m.id);
  const walked = [];
  for await (const info of client.models.list({ limit: 3 })) walked.push(info.id);
  assert.deepEqual(walked, all);
  const info = await client.models.retrieve(model);
  assert.equal(info.type, "model");
});

await check("errors: NotFoundError, BadRequestError, AuthenticationError", async () => {
  await assert.rejects(
    client.messages.create({ model: "no-such-model", max_tokens: 5, messages: [{ role: "user", content: "x" }] }),
    (err) => err instanceof Anthropic.NotFoundError && err.status === 404,
  );
  await assert.rejects(
    client.messages.create({ model, max_tokens: 5, messages: [{ role: "user", content: "x" }], bogus: 1 }),
    (err) => err instanceof Anthropic.BadRequestError && /bogus/.test(err.message),
  );
  const wrong = new Anthropic({ baseURL, apiKey: "wrong-key", maxRetries: 0 });
  await assert.rejects(
    wrong.models.list(),
    (err) => err instanceof Anthropic.AuthenticationError && err.status === 401,
  );
});

await check("messages.batches: create, retrieve, results, list", async () => {
  const requests = [0, 1].map((i) => ({
    custom_id: `ts-${i}`,
    params: { model, max_tokens: 8, messages: [{ role: "user", content: `batch ${i}` }] },
  }));
  const batch = await client.messages.batches.create({ requests });
  assert.match(batch.id, /^msgbatch_/);
  let current = batch;
  for (let i = 0; i < 600 && current.processing_status !== "ended"; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    current = await client.messages.batches.retrieve(batch.id);
  }
  assert.equal(current.processing_status, "ended");
  const seen = [];
  for await (const item of await client.messages.batches.results(batch.id)) {
    assert.equal(item.result.type, "succeeded");
    seen.push(item.custom_id);
  }
  assert.deepEqual(seen.sort(), ["ts-0", "ts-1"]);
  const listed = [];
  for await (const b of client.messages.batches.list({ limit: 1 })) listed.push(b.id);
  assert.ok(listed.includes(batch.id));
  await client.messages.batches.delete(batch.id);
  await assert.rejects(
    client.messages.batches.retrieve(batch.id),
    (err) => err instanceof Anthropic.NotFoundError,
  );
});
