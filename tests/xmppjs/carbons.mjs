#!/usr/bin/env node
// XEP-0280 message carbons seen by @xmpp/client (xmpp.js), against fedrouter; the
// scenario of tests/slixmpp/carbons.py. Run by tests/xmppjs.rs.
//
// Alice logs in twice (resources "phone" and "laptop"); the laptop enables carbons
// (`<iq type='set'><enable xmlns='urn:xmpp:carbons:2'/></iq>`, §4); bob logs in.
//   received_carbon     bob writes to alice's phone (full JID): the laptop gets
//                       <received><forwarded><message/></forwarded></received> (§6.2)
//   sent_carbon         the phone writes to bob: the laptop gets a <sent/> copy (§6.3)
//   private_not_copied  bob writes a <private/> message (§7), then a marker, to the
//                       phone: the laptop gets the marker's copy and none of the private
//                       one (it would have come first), and the phone got both
//
// Usage: node carbons.mjs HOST PORT ALICE BOB PASSWORD [--timeout S]
// Prints common.mjs's JSON line with "carbons": {"received": [...], "sent": [...]}
// (bodies of the forwarded messages as the laptop saw them, in order) and
// "copies": [{"direction", "outer_from", "inner_from", "inner_to"}].

import {
  StepFailed,
  bare,
  iq,
  login,
  main,
  messages,
  parseArgs,
  stopAll,
  until,
  xml,
} from "./common.mjs";

const NS = "urn:xmpp:carbons:2";
const FORWARD = "urn:xmpp:forward:0";

/// Carbon copies in `log`: {direction: "received"|"sent", outer_from, inner: message}.
function copies(log) {
  const out = [];
  for (const s of log) {
    if (!s.is("message")) continue;
    for (const direction of ["received", "sent"]) {
      const inner = s.getChild(direction, NS)?.getChild("forwarded", FORWARD)?.getChild("message");
      if (inner) out.push({ direction, outer_from: s.attrs.from ?? null, inner });
    }
  }
  return out;
}

function bodies(log, direction) {
  return copies(log)
    .filter((c) => c.direction === direction)
    .map((c) => c.inner.getChildText("body"));
}

async function flow(opts, result) {
  const clients = [];
  try {
    const phone = await login(opts, "phone", opts.alice, opts.password, "phone");
    clients.push(phone);
    const laptop = await login(opts, "laptop", opts.alice, opts.password, "laptop");
    clients.push(laptop);
    const bob = await login(opts, "bob", opts.bob, opts.password, "desk");
    clients.push(bob);
    for (const c of clients) await c.send(xml("presence"));
    result.steps.push("login");

    await iq(laptop, "set", xml("enable", { xmlns: NS }));
    result.steps.push("enabled");

    const chat = (body, extra = []) =>
      xml("message", { to: `${opts.alice}/phone`, type: "chat" }, xml("body", {}, body), ...extra);
    await bob.send(chat("to the phone"));
    await until(
      laptop,
      (log) => bodies(log, "received").includes("to the phone"),
      "<received/> carbon",
    );
    result.steps.push("received_carbon");

    await phone.send(
      xml("message", { to: `${opts.bob}/desk`, type: "chat" }, xml("body", {}, "from the phone")),
    );
    await until(laptop, (log) => bodies(log, "sent").includes("from the phone"), "<sent/> carbon");
    result.steps.push("sent_carbon");

    await bob.send(chat("private one", [xml("private", { xmlns: NS })]));
    await bob.send(chat("marker"));
    await until(laptop, (log) => bodies(log, "received").includes("marker"), "the marker's carbon");
    const got = bodies(laptop.log, "received");
    if (got.includes("private one")) {
      throw new StepFailed(`laptop: the <private/> message was copied: ${JSON.stringify(got)}`);
    }
    await until(
      phone,
      (log) => ["private one", "marker"].every((b) => messages(log).some((m) => m.body === b)),
      "the private message and the marker",
    );
    result.steps.push("private_not_copied");

    result.carbons = { received: got, sent: bodies(laptop.log, "sent") };
    result.copies = copies(laptop.log).map((c) => ({
      direction: c.direction,
      outer_from: c.outer_from,
      inner_from: bare(c.inner.attrs.from),
      inner_to: c.inner.attrs.to ?? null,
    }));
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
    ["alice", "bob", "password"],
    "carbons.mjs HOST PORT ALICE BOB PASSWORD [--timeout S]",
  ),
);
