;; Calls a function through the table with the wrong signature.
;; expect: sandbox_error indirect call type mismatch
(module
  (memory (export "memory") 1)
  (type $two (func (param i32 i32) (result i32)))
  (table 1 funcref)
  (func $one (result i32) (i32.const 1))
  (elem (i32.const 0) $one)
  (func (export "heal") (result i32)
    (call_indirect (type $two) (i32.const 1) (i32.const 2) (i32.const 0))))
