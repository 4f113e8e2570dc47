;; Divides by zero.
;; expect: sandbox_error divide by zero
(module (memory (export "memory") 1)
  (func (export "heal") (result i32) (i32.div_u (i32.const 1) (i32.const 0))))
