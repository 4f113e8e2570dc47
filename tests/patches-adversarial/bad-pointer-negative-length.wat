;; A negative length to phoenix.log.
;; expect: sandbox_error bad_pointer
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "heal") (result i32)
    (call $log (i32.const 0) (i32.const -1))
    (i32.const 0)))
