;; Passes a pointer far outside its memory to phoenix.action.
;; expect: sandbox_error bad_pointer
(module (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (import "phoenix" "log" (func $log (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "heal") (result i32)
    (drop (call $action (i32.const -16) (i32.const 64)))
    (i32.const 0)))
