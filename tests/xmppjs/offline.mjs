#!/usr/bin/env node
// Offline messages (XEP-0160) seen by @xmpp/client (xmpp.js, npm; a client library in
// another language than slixmpp, written by nobody here). Run by tests/xmppjs.rs.
//
// Two phases, one per run, so that the test can wait between them until the server has
// stored what was sent (its `offline_stored` counter):
//
//   send    JID logs in (STARTTLS, the certificate verified by Node against its CAs plus
//           NODE_EXTRA_CA_CERTS for the JID's domain; SASL SCRAM-SHA-1; bind) WITHOUT
//           sending presence, sends --to a `chat`, a `normal` and a `headline` message,
//           and stops.
//   receive JID logs in, sends initial presence, waits for --expect messages, then pings
//           the server (a marker: whatever came with the stored messages arrived before
//           its answer) and stops.
//
// Prints ONE JSON line on stdout:
//
//   {"ok": true|false, "error": null|"why", "jid": bound JID,
//    "messages": [{"from": bare, "type": t, "body": b, "id": id,
//                  "delay_stamp": stamp attribute or null, "delay_from": JID or null,
//                  "delay_parsed": the stamp as Date#toISOString() or null}],
//    "elapsed_ms": N}
//
// Exit 0 only when the phase completed; 1 on failure or timeout; 2 on bad arguments.
// The whole run is bounded by --timeout (seconds).
//
// Usage: node offline.mjs send|receive HOST PORT JID PASSWORD [--to JID] [--expect N]
//                         [--timeout S]

import { client, xml } from "@xmpp/client";

export const BODY_CHAT = "stored chat \u00e9\u65e5 <&>";
export const BODY_NORMAL = "stored normal";
export const BODY_HEADLINE = "headline, never stored";

function usage(why) {
  process.stderr.write(`offline.mjs: ${why}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const [phase, host, port, jid, password, ...rest] = argv;
  if (!["send", "receive"].includes(phase)) usage("phase must be send or receive");
  if (!host || !port || !jid || !password) usage("HOST PORT JID PASSWORD are required");
  const opts = { phase, host, port: Number(port), jid, password, to: null, expect: 2, timeout: 30 };
  for (let i = 0; i < rest.length; i += 2) {
    const [k, v] = [rest[i], rest[i + 1]];
    if (v === undefined) usage(`${k} needs a value`);
    if (k === "--to") opts.to = v;
    else if (k === "--expect") opts.expect = Number(v);
    else if (k === "--timeout") opts.timeout = Number(v);
    else usage(`unknown option ${k}`);
  }
  if (phase === "send" && !opts.to) usage("send needs --to");
  if (!jid.includes("@")) usage("JID must be user@domain");
  return opts;
}

function bare(jid) {
  return jid ? jid.toString().split("/")[0] : null;
}

async function run(opts, result) {
  const [username, domain] = opts.jid.split("@");
  const xmpp = client({
    service: `xmpp://${opts.host}:${opts.port}`,
    domain,
    username,
    password: opts.password,
    resource: `xmppjs-${opts.phase}`,
    // xmpp.js bounds each step by 2 s by default; the run's --timeout is the bound.
    timeout: opts.timeout * 1000,
  });
  const errors = [];
  xmpp.on("error", (err) => errors.push(String(err)));
  let wake = null;
  xmpp.on("stanza", (stanza) => {
    if (!stanza.is("message")) return;
    const delay = stanza.getChild("delay", "urn:xmpp:delay");
    const stamp = delay ? delay.attrs.stamp ?? null : null;
    const parsed = stamp ? new Date(stamp) : null;
    result.messages.push({
      from: bare(stanza.attrs.from),
      type: stanza.attrs.type ?? "normal",
      body: stanza.getChildText("body"),
      id: stanza.attrs.id ?? null,
      delay_stamp: stamp,
      delay_from: delay ? delay.attrs.from ?? null : null,
      delay_parsed: parsed && !Number.isNaN(parsed.getTime()) ? parsed.toISOString() : null,
    });
    if (wake) wake();
  });
  try {
    const address = await xmpp.start();
    result.jid = address.toString();
    if (opts.phase === "send") {
      for (const [type, body, id] of [
        ["chat", BODY_CHAT, "js-chat"],
        ["normal", BODY_NORMAL, "js-normal"],
        ["headline", BODY_HEADLINE, "js-headline"],
      ]) {
        await xmpp.send(xml("message", { to: opts.to, type, id }, xml("body", {}, body)));
      }
    } else {
      await xmpp.send(xml("presence"));
      // Bounded by the run's timeout (the caller's race).
      while (result.messages.length < opts.expect) {
        await new Promise((resolve) => {
          wake = resolve;
        });
      }
      wake = null;
      await xmpp.iqCaller.request(
        xml("iq", { type: "get", to: domain }, xml("ping", { xmlns: "urn:xmpp:ping" })),
      );
    }
    if (errors.length) throw new Error(`client errors: ${errors.join("; ")}`);
    result.ok = true;
  } finally {
    try {
      await xmpp.stop();
    } catch (e) {
      result.stop_error = String(e);
    }
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const result = { ok: false, error: null, jid: null, messages: [] };
  const started = Date.now();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`the run did not finish within ${opts.timeout} s`)),
      opts.timeout * 1000,
    );
  });
  try {
    await Promise.race([run(opts, result), timeout]);
  } catch (e) {
    result.error = `${e?.name ?? "Error"}: ${e?.message ?? e}`;
  }
  clearTimeout(timer);
  result.elapsed_ms = Date.now() - started;
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(result.ok ? 0 : 1);
}

main();
