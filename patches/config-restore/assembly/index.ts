// config-restore: plans one write_file with the demo app's known-good config. The policy
// says where the patch may write (.demo/config) and that a person approves first.
import { plan, PLANNED } from "phoenix-patch";

const KNOWN_GOOD = "port = 8080\nworkers = 4\n";

export function heal(): i32 {
  plan.writeFile(".demo/config/app.conf", KNOWN_GOOD);
  return PLANNED;
}
