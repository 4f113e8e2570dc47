;; `heal` is an exported global, not a function.
;; expect: patch_rejected heal: () -> i32
(module
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1) (global (export "heal") i32 (i32.const 0)))
