;; Asks for a fault field into a buffer of negative size.
;; expect: sandbox_error bad_pointer
(module (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1) (data (i32.const 0) "app")
  (func (export "heal") (result i32) (drop (call $fault_get (i32.const 0) (i32.const 3) (i32.const 16) (i32.const -1))) (i32.const 0)))
