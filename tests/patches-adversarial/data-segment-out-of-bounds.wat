;; A data segment past the end of its (small) memory: a trap at instantiation.
;; expect: sandbox_error trap
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 65530) "does not fit here")
  (func (export "heal") (result i32) (i32.const 0)))
