;; Asks phoenix.fault_get to write past the end of its memory.
;; expect: sandbox_error bad_pointer
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "kind")
  (func (export "heal") (result i32)
    (drop (call $fault_get (i32.const 0) (i32.const 4) (i32.const 65530) (i32.const 100)))
    (i32.const 0)))
