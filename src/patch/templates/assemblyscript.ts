// {{name}}: a phoenix patch. It reads the fault and plans what should be done; phoenix checks
// the plan against the policy's capabilities, carries it out and verifies the fix.
// Build and test it with `phoenix patch test {{dir}}`; the SDK's guide: docs/writing-patches.md.
import { decline, fault, log, plan, PLANNED } from "phoenix-patch";

// Plans the policy's `cleanup` command for a `disk_full` fault; declines anything else.
export function heal(): i32 {
  if (fault.kind() != "disk_full") return decline();
  const mount = fault.label("mount");
  if (mount !== null) log("disk_full on " + mount + ": planning the cleanup");
  plan.exec("cleanup");
  return PLANNED;
}
