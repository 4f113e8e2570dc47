;; Two statements of the ABI version (which one would count?): refused.
;; expect: patch_rejected states its ABI version 2 times
(module
  (@custom "phoenix.abi" "1")
  (@custom "phoenix.abi" (after code) "1")
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"exec\",\"command\":\"ok\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 30)))
    (i32.const 0)))
