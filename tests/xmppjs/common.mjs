// Shared harness of the xmpp.js scenario scripts (carbons.mjs, password_change.mjs,
// blocking.mjs, sm_resume.mjs) run by tests/xmppjs.rs: argument parsing, logging in
// with @xmpp/client, waiting on received stanzas, stopping, and the one JSON line.
//
// Every script prints ONE JSON line on stdout:
//
//   {"ok": true|false, "error": null|"why", "steps": [names of the steps done, in order],
//    ...what the script adds, "elapsed_ms": N}
//
// and exits 0 only when its scenario completed; 1 on failure or timeout; 2 on bad
// arguments. The whole run is bounded by --timeout (seconds): every wait below is raced
// against it by `main`.

import { client, xml } from "@xmpp/client";

export { xml };

/// A failed step: the run stops and reports `message`.
export class StepFailed extends Error {
  constructor(message) {
    super(message);
    this.name = "StepFailed";
  }
}

/// Parses `HOST PORT NAME... [--timeout S]` (`names` are the script's positional
/// arguments after HOST PORT) into `{host, port, timeout, [name]: value}`; exits 2 with
/// `usage` on anything else.
export function parseArgs(argv, names, usage) {
  const bad = (why) => {
    process.stderr.write(`${why}\nusage: ${usage}\n`);
    process.exit(2);
  };
  const positional = [];
  let timeout = 30;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--timeout") {
      timeout = Number(argv[++i]);
      if (!(timeout > 0)) bad("--timeout needs a positive number of seconds");
    } else if (argv[i].startsWith("--")) {
      bad(`unknown option ${argv[i]}`);
    } else {
      positional.push(argv[i]);
    }
  }
  const want = ["host", "port", ...names];
  if (positional.length !== want.length) {
    bad(`expected ${want.length} arguments (${want.join(" ")}), got ${positional.length}`);
  }
  const opts = { timeout };
  want.forEach((k, i) => {
    opts[k] = positional[i];
  });
  opts.port = Number(opts.port);
  if (!Number.isInteger(opts.port)) bad(`PORT is not a number: ${positional[1]}`);
  return opts;
}

/// The bare form of a JID (string or @xmpp/jid), or null.
export function bare(jid) {
  return jid ? jid.toString().split("/")[0] : null;
}

/// A started @xmpp/client: logged in as `jid` (bare) + `resource` with `password` over
/// STARTTLS (the certificate checked against NODE_EXTRA_CA_CERTS) and SASL SCRAM-SHA-1.
/// `c.log` holds every stanza received, in order; `c.name` names it in errors.
export async function login(opts, name, jid, password, resource, { start = true } = {}) {
  const [username, domain] = jid.split("@");
  const c = client({
    service: `xmpp://${opts.host}:${opts.port}`,
    domain,
    username,
    password,
    resource,
    // xmpp.js bounds each step (open, TLS, SASL, bind) by 2 s by default, which a loaded
    // test machine exceeds; the run's own --timeout is the bound that matters.
    timeout: opts.timeout * 1000,
  });
  c.name = name;
  c.log = [];
  c.errors = [];
  c.waiters = new Set();
  c.on("error", (err) => c.errors.push(String(err)));
  c.on("stanza", (stanza) => {
    c.log.push(stanza);
    for (const w of [...c.waiters]) w();
  });
  if (start) await c.start();
  return c;
}

/// Resolves when `pred(c.log)` holds (checked now and on every stanza `c` receives);
/// bounded by the run's --timeout (the race in `main`), which then names `what`.
export function until(c, pred, what) {
  if (pred(c.log)) return Promise.resolve();
  current.waiting = `${c.name}: ${what}`;
  return new Promise((resolve) => {
    const w = () => {
      if (pred(c.log)) {
        c.waiters.delete(w);
        current.waiting = null;
        resolve();
      }
    };
    c.waiters.add(w);
  });
}

/// Messages in `log` (non-error), as `{from, to, type, body, id}`.
export function messages(log) {
  return log
    .filter((s) => s.is("message") && s.attrs.type !== "error")
    .map((s) => ({
      from: s.attrs.from ?? null,
      to: s.attrs.to ?? null,
      type: s.attrs.type ?? "normal",
      body: s.getChildText("body"),
      id: s.attrs.id ?? null,
    }));
}

/// Error messages in `log`, as `[id, condition]` (RFC 6120 §8.3 defined condition).
export function messageErrors(log) {
  return log
    .filter((s) => s.is("message") && s.attrs.type === "error")
    .map((s) => {
      const err = s.getChild("error");
      const cond = err?.children.find(
        (c) => typeof c !== "string" && c.attrs.xmlns === "urn:ietf:params:xml:ns:xmpp-stanzas",
      );
      return [s.attrs.id ?? null, cond ? cond.name : null];
    });
}

/// Sends `<iq type=…>` with `child` and resolves with the result; rejects with the error's
/// condition named on an error answer.
export async function iq(c, type, child, to = undefined) {
  try {
    return await c.iqCaller.request(xml("iq", { type, ...(to ? { to } : {}) }, child));
  } catch (e) {
    throw new StepFailed(`${c.name}: iq ${type} ${child.name} failed: ${e?.condition ?? e}`);
  }
}

/// Drops `c`'s connection abruptly: its TCP (or TLS) socket destroyed, no
/// `</stream:stream>`, no ack. Returns whether there was a socket.
export function dropConnection(c) {
  const wrapper = c.socket;
  const raw = wrapper?.socket ?? wrapper;
  if (!raw) return false;
  raw.destroy();
  return true;
}

/// Stops every client of `clients` (no reconnection; errors noted in `result`): an
/// online one closes its stream, any other has its socket destroyed.
export async function stopAll(clients, result) {
  for (const c of clients) {
    if (!c) continue;
    c.reconnect.stop();
    try {
      if (c.status === "online") await c.stop();
      else dropConnection(c);
    } catch (e) {
      (result.stop_errors ??= []).push(`${c.name}: ${e}`);
    }
  }
}

const current = { waiting: null };

/// Runs `flow(opts, result)` (which fills `result.steps` and sets `result.ok`) bounded
/// by `opts.timeout`, prints the JSON line and exits.
export async function main(flow, opts) {
  const result = { ok: false, error: null, steps: [] };
  const started = Date.now();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new Error(
            `the run did not finish within ${opts.timeout} s` +
              (current.waiting ? ` (waiting for ${current.waiting})` : ""),
          ),
        ),
      opts.timeout * 1000,
    );
  });
  try {
    await Promise.race([flow(opts, result), timeout]);
  } catch (e) {
    result.ok = false;
    result.error = `${e?.name ?? "Error"}: ${e?.message ?? e}`;
  }
  clearTimeout(timer);
  result.elapsed_ms = Date.now() - started;
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(result.ok ? 0 : 1);
}
