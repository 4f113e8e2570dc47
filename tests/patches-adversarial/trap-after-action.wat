;; Plans an action, then traps: nothing of a failed run may be carried out.
;; expect: sandbox_error unreachable
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"exec\",\"command\":\"ok\"}")
  (func (export "heal") (result i32) (drop (call $action (i32.const 0) (i32.const 30))) unreachable))
