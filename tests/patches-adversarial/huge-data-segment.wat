;; A data segment placed at 3 GiB, so the memory must be at least that large.
;; expect: patch_rejected memory_limit
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 49153)
  (data (i32.const 3221225472) "payload")
  (func (export "heal") (result i32) (i32.const 0)))
