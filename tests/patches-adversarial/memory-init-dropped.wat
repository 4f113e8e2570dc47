;; Initialises memory from a data segment it dropped first: a trap, not a read of freed bytes.
;; expect: sandbox_error out of bounds memory access
(module (memory (export "memory") 1) (data $d "abc")
  (func (export "heal") (result i32) (data.drop $d) (memory.init $d (i32.const 0) (i32.const 0) (i32.const 3)) (i32.const 0)))
