#!/usr/bin/env node
// XEP-0191 blocking seen by @xmpp/client (xmpp.js), against fedrouter; the scenario of
// tests/slixmpp/blocking.py. Run by tests/xmppjs.rs.
//
// Alice ("phone" and "laptop"), bob and carol log in and send presence.
//   login             the laptop fetches the block list (§3.1), which is empty
//   blocked           the phone blocks bob (§3.2): the laptop gets the <block/> push; the
//                     list it fetches then is "blocklist"
//   inbound_blocked   bob writes to alice and gets an error; carol then writes a marker,
//                     which reaches the phone, while bob's message reached neither resource
//   outbound_refused  the phone writes to bob and gets an error (§3.3: not-acceptable)
//   unblocked         the phone unblocks bob (§3.4): the laptop gets the <unblock/> push,
//                     and bob's next message reaches the phone
//
// Usage: node blocking.mjs HOST PORT ALICE BOB CAROL PASSWORD [--timeout S]
// Prints common.mjs's JSON line with "blocklist" (sorted JIDs) and "errors":
// {"bob": [[id, condition]...], "alice": [[id, condition]...]}.

import {
  StepFailed,
  iq,
  login,
  main,
  messageErrors,
  messages,
  parseArgs,
  stopAll,
  until,
  xml,
} from "./common.mjs";

const NS = "urn:xmpp:blocking";

async function blocklist(c) {
  const res = await iq(c, "get", xml("blocklist", { xmlns: NS }));
  const list = res?.getChild("blocklist", NS);
  if (!list) throw new StepFailed(`${c.name}: the block list result has no <blocklist/>: ${res}`);
  return list.getChildren("item").map((i) => i.attrs.jid).sort();
}

function pushed(log, name) {
  return log.some((s) => s.is("iq") && s.attrs.type === "set" && s.getChild(name, NS));
}

function bodies(log) {
  return messages(log).map((m) => m.body);
}

async function flow(opts, result) {
  const clients = [];
  try {
    const phone = await login(opts, "phone", opts.alice, opts.password, "phone");
    clients.push(phone);
    const laptop = await login(opts, "laptop", opts.alice, opts.password, "laptop");
    clients.push(laptop);
    // Pushes (§3.2, §3.4) are answered with a result, as a client does.
    for (const c of [phone, laptop]) {
      for (const name of ["block", "unblock"]) c.iqCallee.set(NS, name, () => true);
    }
    const bob = await login(opts, "bob", opts.bob, opts.password, "desk");
    clients.push(bob);
    const carol = await login(opts, "carol", opts.carol, opts.password, "desk");
    clients.push(carol);
    for (const c of clients) await c.send(xml("presence"));
    const before = await blocklist(laptop);
    if (before.length) throw new StepFailed(`the block list is not empty at first: ${before}`);
    result.steps.push("login");

    await iq(phone, "set", xml("block", { xmlns: NS }, xml("item", { jid: opts.bob })));
    await until(laptop, (log) => pushed(log, "block"), "block push");
    result.blocklist = await blocklist(laptop);
    result.steps.push("blocked");

    await bob.send(
      xml(
        "message",
        { to: opts.alice, type: "chat", id: "blocked-1" },
        xml("body", {}, "can you hear me"),
      ),
    );
    await until(bob, (log) => messageErrors(log).length > 0, "an error for the blocked message");
    await carol.send(xml("message", { to: opts.alice, type: "chat" }, xml("body", {}, "marker")));
    await until(phone, (log) => bodies(log).includes("marker"), "carol's marker");
    if ([...bodies(phone.log), ...bodies(laptop.log)].includes("can you hear me")) {
      throw new StepFailed("bob's message reached alice while he was blocked");
    }
    result.steps.push("inbound_blocked");

    await phone.send(
      xml(
        "message",
        { to: `${opts.bob}/desk`, type: "chat", id: "to-blocked-1" },
        xml("body", {}, "hi bob"),
      ),
    );
    await until(phone, (log) => messageErrors(log).length > 0, "an error for the message to bob");
    result.errors = { bob: messageErrors(bob.log), alice: messageErrors(phone.log) };
    result.steps.push("outbound_refused");

    await iq(phone, "set", xml("unblock", { xmlns: NS }, xml("item", { jid: opts.bob })));
    await until(laptop, (log) => pushed(log, "unblock"), "unblock push");
    await bob.send(xml("message", { to: opts.alice, type: "chat" }, xml("body", {}, "back again")));
    await until(phone, (log) => bodies(log).includes("back again"), "bob's message after unblock");
    if (bodies(bob.log).includes("hi bob")) {
      throw new StepFailed("alice's message reached bob while he was blocked");
    }
    result.steps.push("unblocked");
    const errors = clients.flatMap((c) => c.errors.map((e) => `${c.name}: ${e}`));
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
    ["alice", "bob", "carol", "password"],
    "blocking.mjs HOST PORT ALICE BOB CAROL PASSWORD [--timeout S]",
  ),
);
