;; `heal` returns an i64: the entry point's signature is checked at registration.
;; expect: patch_rejected heal: () -> i32
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "heal") (result i64) (i64.const 0)))
