;; One action of 1 MiB: refused before it is parsed.
;; expect: sandbox_error action_too_large
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 17)
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 1048576)))
    (i32.const 0)))
