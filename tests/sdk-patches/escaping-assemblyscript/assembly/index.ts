// Puts the fault's label `text` in every string of every action kind: the contract tests
// (patch.toml) check that phoenix reads each back exactly, whatever the text holds. With label
// `lone`, a command holding a lone surrogate (not Unicode) must come out as U+FFFD.
import { decline, fault, plan, Signal, PLANNED } from "phoenix-patch";

export function heal(): i32 {
  if (fault.label("lone") !== null) {
    plan.exec("a" + String.fromCharCode(0xd800) + "b" + String.fromCharCode(0xdc00));
    return PLANNED;
  }
  const text = fault.label("text");
  if (text === null) return decline();
  plan.exec(text);
  plan.writeFile(text, text);
  plan.restart(text);
  plan.signal(text, Signal.TERM);
  plan.http("PATCH", text).header(text, text).body(text).plan();
  return PLANNED;
}
