// The AssemblyScript twin of patches/disk-cleanup (Rust), for P4 (scripts/bench): for a
// `disk_full` fault, plans the policy's declared `cleanup` command; declines anything else.
import { decline, fault, log, plan, PLANNED } from "phoenix-patch";

export function heal(): i32 {
  if (fault.kind() != "disk_full") return decline();
  log("disk_full: planning the declared cleanup command");
  plan.exec("cleanup");
  return PLANNED;
}
