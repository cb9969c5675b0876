// OpenAI's Node SDK against chorus in front of the FastAPI backend
// (../common/backend.py), through the plain gateway and the TLS one; Node's
// fetch speaks HTTP/1.1 to both. check.py starts everything and runs this with
// PLAIN, TLS, their admin URLs, BACKEND and NODE_EXTRA_CA_CERTS (the TLS
// gateway's self-signed certificate) set; with the argument `demo`, against
// `chorus demo` instead (DEMO, and DEMO_STATS: the mock's counters).
//
// Every scenario asserts what reached the backend, not only what the SDK saw.
// Prints a line per check; exits 1 if any failed.

import OpenAI from "openai";

const env = process.env;
const STREAMED = Array.from({ length: 15 }, (_, i) => `tok${i} `).join("");
const failures = [];

function check(name, ok, detail) {
  console.log(`${ok ? "PASS" : "FAIL"} ${name}: ${detail}`);
  if (!ok) failures.push(name);
}

const stats = async () => (await fetch(env.BACKEND + "/stats")).json();

async function until(predicate, timeout = 10000) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    if (await predicate()) return true;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return predicate();
}

async function idle(admin) {
  const text = await (await fetch(admin + "/metrics")).text();
  return text
    .split("\n")
    .filter((line) => /^chorus_(flights|subscribers)_active/.test(line))
    .every((line) => line.endsWith(" 0"));
}

// A chat request's body; requests with the same tag are identical.
const ask = (tag, extra = {}) => ({
  model: "m", messages: [{ role: "user", content: tag }], max_tokens: 15, ...extra,
});

// One streamed completion read to its end.
async function streamed(client, body) {
  const { data, response } = await client.chat.completions
    .create({ ...body, stream: true })
    .withResponse();
  let text = "", finish = null, chunks = 0;
  for await (const chunk of data) {
    chunks++;
    text += chunk.choices[0]?.delta?.content ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  const header = (name) => response.headers.get(name);
  return { text, finish, chunks, role: header("x-chorus-role"), buffering: header("x-accel-buffering") };
}

async function scenarios(name, url, admin) {
  const client = new OpenAI({ baseURL: url + "/v1", apiKey: "sk-check" });
  const say = (check_, ok, detail) => check(`node ${name}: ${check_}`, ok, detail);
  const tag = `node ${name}`;

  let before = (await stats()).chats;
  const one = await streamed(client, ask(tag + " one"));
  say(
    "a streamed completion arrives whole, event by event",
    one.text === STREAMED && one.finish === "stop" && one.buffering === "no"
      && (await stats()).chats - before === 1,
    `${one.chunks} chunks, role ${one.role}`,
  );

  before = (await stats()).chats;
  const answers = await Promise.all([0, 1, 2].map(() => streamed(client, ask(tag + " triple"))));
  let chats = (await stats()).chats - before;
  const roles = answers.map((a) => a.role).sort();
  say(
    "three identical streams reach the backend once",
    chats === 1 && answers.every((a) => a.text === STREAMED && a.finish === "stop")
      && roles.join() === "follower,follower,leader",
    `${chats} upstream requests, roles ${roles}`,
  );

  before = (await stats()).chats;
  const whole = await Promise.all([0, 1, 2].map(() => client.chat.completions.create(ask(tag + " whole"))));
  chats = (await stats()).chats - before;
  const contents = new Set(whole.map((w) => w.choices[0].message.content));
  say(
    "three identical completions reach the backend once",
    chats === 1 && contents.size === 1 && contents.has("hi ".repeat(15)) && whole[0].usage.total_tokens === 20,
    `${chats} upstream requests, ${contents.size} distinct answers`,
  );

  // Leaving a for-await loop aborts the SDK's request.
  let cancelled = (await stats()).chats_cancelled;
  const stream = await client.chat.completions.create({ ...ask(tag + " break", { max_tokens: 200 }), stream: true });
  let read = 0;
  for await (const _ of stream) if (++read === 3) break;
  let stopped = await until(async () => (await stats()).chats_cancelled > cancelled);
  say("leaving the stream's loop stops the backend", stopped, `cancelled ${(await stats()).chats_cancelled - cancelled}`);

  cancelled = (await stats()).chats_cancelled;
  const aborted = await client.chat.completions.create({ ...ask(tag + " abort", { max_tokens: 200 }), stream: true });
  read = 0;
  let outcome = "ended";
  try {
    for await (const _ of aborted) if (++read === 3) aborted.controller.abort();
  } catch (error) {
    outcome = error.constructor.name;
  }
  stopped = await until(async () => (await stats()).chats_cancelled > cancelled);
  say("aborting the stream stops the backend", stopped,
    `${outcome}, cancelled ${(await stats()).chats_cancelled - cancelled}`);

  // The SDK retries a 429 twice: chorus never keeps an error for later.
  before = (await stats()).chats;
  let error = null;
  try {
    await client.chat.completions.create(ask(tag + " limited", { fail: 429 }));
  } catch (e) {
    error = e;
  }
  chats = (await stats()).chats - before;
  say(
    "a 429 reaches the SDK, and each of its retries the backend",
    error instanceof OpenAI.RateLimitError && error.error?.type === "requested" && chats === 3,
    `${error?.constructor.name} ${error?.status}, ${chats} upstream requests`,
  );

  // chorus's own errors are JSON the SDK reads.
  before = (await stats()).chats;
  error = null;
  try {
    await client.chat.completions.create({ model: "m", messages: [{ role: "user", content: "x".repeat(1 << 20) }] });
  } catch (e) {
    error = e;
  }
  chats = (await stats()).chats - before;
  say(
    "a body over the limit gets 413 with a JSON error",
    error instanceof OpenAI.APIError && error.status === 413 && error.error?.type === "body_too_large" && chats === 0,
    `${error?.constructor.name} ${error?.status} ${error?.error?.type}, ${chats} upstream requests`,
  );

  read = 0;
  error = null;
  try {
    const broken = await client.chat.completions.create({ ...ask(tag + " broken", { break_after: 3 }), stream: true });
    for await (const _ of broken) read++;
  } catch (e) {
    error = e;
  }
  say(
    "a stream broken upstream ends in an error, not a clean end",
    error !== null && read === 3,
    `${read} chunks, then ${error?.constructor.name}: ${error?.message}`,
  );

  say("nothing is left in flight", await until(() => idle(admin)), "flights and subscribers active at 0");
}

// `chorus demo`: the built-in mock behind the gateway.
async function demo() {
  const client = new OpenAI({ baseURL: env.DEMO + "/v1", apiKey: "sk-demo" });
  const requests = async () => (await (await fetch(env.DEMO_STATS)).json()).requests;
  const before = await requests();
  const question = { model: "mock", messages: [{ role: "user", content: "Hello" }] };
  const answers = await Promise.all([0, 1, 2].map(() => streamed(client, question)));
  const made = (await requests()) - before;
  check(
    "node demo: three identical streams reach the mock once",
    made === 1 && new Set(answers.map((a) => a.text)).size === 1 && answers[0].text !== ""
      && answers[0].finish === "stop",
    `${made} upstream requests, ${JSON.stringify(answers[0].text.slice(0, 40))}`,
  );
}

if (process.argv[2] === "demo") {
  await demo();
} else {
  await scenarios("plain", env.PLAIN, env.PLAIN_ADMIN);
  await scenarios("tls", env.TLS, env.TLS_ADMIN);
}
process.exit(failures.length ? 1 : 0);
