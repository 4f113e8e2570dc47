;; Asks fault_get for a buffer that ends one byte past its memory.
;; expect: sandbox_error bad_pointer
(module
  (import "phoenix" "fault_get" (func $fault_get (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "app")
  (func (export "heal") (result i32)
    (drop (call $fault_get (i32.const 0) (i32.const 3) (i32.const 65527) (i32.const 10)))
    (i32.const 0)))
