;; A version of 2^32 + 1, which a careless parser reads as 1: refused, not wrapped.
;; expect: patch_rejected must hold the ABI version in decimal digits
(module
  (@custom "phoenix.abi" "4294967297")
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"exec\",\"command\":\"ok\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 30)))
    (i32.const 0)))
