// The npm advisory-lock package (2.x) holding or trying a lock, for tests/peers/peers.rs.
//
// usage: node peer.js <database url> <lock name> <hold|try>
// hold: take the lock (waiting), print "held", wait for a line (or EOF) on stdin, release, print
//       "released". try: try without waiting, print "acquired" (and release it) or "busy".
"use strict";
const advisoryLock = require("advisory-lock").default;

async function main() {
  const [url, name, mode] = process.argv.slice(2);
  const mutex = advisoryLock(url)(name);
  if (mode === "hold") {
    const unlock = await mutex.lock();
    console.log("held");
    await new Promise((resolve) => {
      process.stdin.once("data", resolve);
      process.stdin.once("end", resolve);
    });
    await unlock();
    console.log("released");
    process.exit(0);
  } else if (mode === "try") {
    const unlock = await mutex.tryLock();
    if (unlock) {
      await unlock();
      console.log("acquired");
    } else {
      console.log("busy");
    }
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
