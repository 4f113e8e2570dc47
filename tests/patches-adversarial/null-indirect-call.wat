;; Calls through an empty table slot.
;; expect: sandbox_error uninitialized
(module (memory (export "memory") 1) (table 4 funcref) (type $t (func (result i32)))
  (func (export "heal") (result i32) (call_indirect (type $t) (i32.const 2))))
