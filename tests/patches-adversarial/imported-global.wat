;; Imports a global from the host.
;; expect: patch_rejected import phoenix.fuel is not allowed
(module
  (import "phoenix" "fuel" (global i32))
  (memory (export "memory") 1)
  (func (export "heal") (result i32) (i32.const 0)))
