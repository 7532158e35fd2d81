#!/usr/bin/env node
// XEP-0198 stream management with resumption seen by @xmpp/client (xmpp.js, whose
// @xmpp/stream-management enables it by itself when the server offers <sm/>), against
// fedrouter. Run by tests/xmppjs.rs.
//
//   login            alice and bob log in and send presence; bob's client enabled stream
//                    management: <enable resume='true'/> answered <enabled id resume max/>
//                    (§3; its attributes in "enabled")
//   before           alice writes to bob's full JID; bob gets it (never acknowledging it
//                    explicitly: his <resume h/> counts it)
//   dropped          bob's socket is destroyed (no </stream:stream>, no <a/>): his client
//                    sees the disconnect, and the server counts the session detached
//                    (fedrouter_c2s_sessions_detached_total on ADMIN's /metrics)
//   sent_while_away  alice writes bob three chats, then asks bob's bare JID for disco#info,
//                    which bob's owner shard answers after it took the three
//   resumed          bob's client reconnects (@xmpp/reconnect) and resumes: <resume
//                    previd h/> answered <resumed previd h/> (§5; in "resumed"), its
//                    `resumed` event, not a new session (`online`)
//   delivered        bob gets the three, then answers a ping of his own to the server
//                    (the marker duplicates would have come before); the bodies of all
//                    that alice sent him are in "bob_got", in order, each once
//
// Usage: node sm_resume.mjs HOST PORT ALICE BOB PASSWORD ADMIN [--timeout S]
// (ADMIN: the server's admin HOST:PORT.) Prints common.mjs's JSON line with "enabled",
// "previd", "resumed", "bob_got" and "bob_errors" (errors bob's client reported: the
// dropped socket may give one).

import {
  StepFailed,
  dropConnection,
  iq,
  login,
  main,
  messages,
  parseArgs,
  stopAll,
  until,
  xml,
} from "./common.mjs";

const NS = "urn:xmpp:sm:3";
export const BEFORE = "before the drop";
export const AWAY = ["away 1", "away 2", "away 3"];

/// The sum of metric `name` (all label sets) on `admin`'s /metrics.
async function metric(admin, name) {
  const res = await fetch(`http://${admin}/metrics`);
  const text = await res.text();
  let sum = 0;
  for (const line of text.split("\n")) {
    const head = line.split(/[{ ]/, 1)[0];
    if (head === name) sum += Number(line.trim().split(/\s+/).pop());
  }
  return sum;
}

/// Resolves with the first nonza `name` (urn:xmpp:sm:3) `c` receives from now on.
function nextNonza(c, name) {
  return new Promise((resolve) => {
    const on = (el) => {
      if (el.is(name, NS)) {
        c.removeListener("nonza", on);
        resolve(el);
      }
    };
    c.on("nonza", on);
  });
}

function fromAlice(log, alice) {
  return messages(log).filter((m) => m.from?.startsWith(`${alice}/`));
}

async function flow(opts, result) {
  const clients = [];
  try {
    const alice = await login(opts, "alice", opts.alice, opts.password, "desk");
    clients.push(alice);
    const bob = await login(opts, "bob", opts.bob, opts.password, "sm", { start: false });
    clients.push(bob);
    const enabled = nextNonza(bob, "enabled");
    await bob.start();
    const en = await enabled;
    // @xmpp/stream-management handles the same <enabled/> in a later promise turn.
    await new Promise((resolve) => setImmediate(resolve));
    result.enabled = {
      resume: en.attrs.resume ?? null,
      max: en.attrs.max ?? null,
      has_id: !!en.attrs.id,
    };
    if (!bob.streamManagement.enabled || !bob.streamManagement.id) {
      throw new StepFailed(`bob's client did not enable stream management: <${en.name}/>`);
    }
    for (const c of clients) await c.send(xml("presence"));
    result.steps.push("login");

    const bobFull = `${opts.bob}/sm`;
    const chat = (body, id) =>
      xml("message", { to: bobFull, type: "chat", id }, xml("body", {}, body));
    await alice.send(chat(BEFORE, "before-1"));
    await until(bob, (log) => fromAlice(log, opts.alice).length === 1, "alice's first message");
    result.steps.push("before");

    result.previd = bob.streamManagement.id;
    bob.reconnect.stop();
    const gone = new Promise((resolve) => bob.once("disconnect", resolve));
    if (!dropConnection(bob)) throw new StepFailed("bob has no socket to drop");
    await gone;
    // Bounded by the run's --timeout; 20 ms between looks.
    for (;;) {
      if ((await metric(opts.admin, "fedrouter_c2s_sessions_detached_total")) >= 1) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    result.steps.push("dropped");

    for (const [i, body] of AWAY.entries()) await alice.send(chat(body, `away-${i + 1}`));
    const discoInfo = xml("query", { xmlns: "http://jabber.org/protocol/disco#info" });
    await iq(alice, "get", discoInfo, opts.bob);
    result.steps.push("sent_while_away");

    const resumedNonza = nextNonza(bob, "resumed");
    const outcome = new Promise((resolve) => {
      bob.streamManagement.once("resumed", () => resolve("resumed"));
      bob.once("online", () => resolve("new session"));
    });
    await bob.reconnect.reconnect();
    const how = await outcome;
    if (how !== "resumed") throw new StepFailed(`bob's client did not resume: ${how}`);
    const r = await resumedNonza;
    result.resumed = { h: r.attrs.h ?? null, previd: r.attrs.previd ?? null };
    result.steps.push("resumed");

    await until(
      bob,
      (log) => fromAlice(log, opts.alice).length >= 1 + AWAY.length,
      "alice's three messages",
    );
    await iq(bob, "get", xml("ping", { xmlns: "urn:xmpp:ping" }), opts.bob.split("@")[1]);
    result.bob_got = fromAlice(bob.log, opts.alice).map((m) => m.body);
    result.steps.push("delivered");
    result.bob_errors = bob.errors;
    if (alice.errors.length) {
      throw new StepFailed(`alice's client errors: ${alice.errors.join("; ")}`);
    }
    result.ok = true;
  } finally {
    await stopAll(clients, result);
  }
}

main(
  flow,
  parseArgs(
    process.argv.slice(2),
    ["alice", "bob", "password", "admin"],
    "sm_resume.mjs HOST PORT ALICE BOB PASSWORD ADMIN [--timeout S]",
  ),
);
