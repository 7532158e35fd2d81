#!/usr/bin/env node
// XEP-0077 password change (§3.3) seen by @xmpp/client (xmpp.js), against fedrouter; the
// scenario of tests/slixmpp/password_change.py. Run by tests/xmppjs.rs.
//
//   login         alice logs in with OLD
//   changed       she sends <iq type='set'><query xmlns='jabber:iq:register'>
//                 <username>alice</username><password>NEW</password></query></iq> and
//                 gets a result
//   old_refused   a client with OLD fails SASL (its condition in "old_condition")
//   new_accepted  a client with NEW logs in
//
// Usage: node password_change.mjs HOST PORT ALICE OLD NEW [--timeout S]
// Prints common.mjs's JSON line with "old_condition".

import { StepFailed, iq, login, main, parseArgs, stopAll, xml } from "./common.mjs";

async function flow(opts, result) {
  const clients = [];
  try {
    const alice = await login(opts, "alice", opts.alice, opts.old, "phone");
    clients.push(alice);
    result.steps.push("login");

    const username = opts.alice.split("@")[0];
    await iq(
      alice,
      "set",
      xml(
        "query",
        { xmlns: "jabber:iq:register" },
        xml("username", {}, username),
        xml("password", {}, opts.new),
      ),
    );
    result.steps.push("changed");

    const old = await login(opts, "old", opts.alice, opts.old, "old", { start: false });
    clients.push(old);
    old.reconnect.stop();
    try {
      await old.start();
      throw new StepFailed("the old password still logs in");
    } catch (e) {
      if (e instanceof StepFailed) throw e;
      if (e?.name !== "SASLError") throw new StepFailed(`old password: not a SASL failure: ${e}`);
      result.old_condition = e.condition ?? null;
    }
    result.steps.push("old_refused");

    const fresh = await login(opts, "new", opts.alice, opts.new, "new");
    clients.push(fresh);
    if (!fresh.jid?.toString().startsWith(`${opts.alice}/`)) {
      throw new StepFailed(`the new password's session is bound to ${fresh.jid}`);
    }
    result.steps.push("new_accepted");
    const errors = [alice, fresh].flatMap((c) => c.errors.map((e) => `${c.name}: ${e}`));
    if (errors.length) throw new StepFailed(`client errors: ${errors.join("; ")}`);
    result.ok = true;
  } finally {
    await stopAll(clients, result);
  }
}

main(
  flow,
  parseArgs(
    process.argv.slice(2),
    ["alice", "old", "new"],
    "password_change.mjs HOST PORT ALICE OLD NEW [--timeout S]",
  ),
);
