;; A module that says it speaks an ABI version phoenix does not: refused before it ever runs.
;; expect: patch_rejected speaks ABI version 2
(module
  (@custom "phoenix.abi" "2")
  (import "phoenix" "action" (func $action (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "{\"kind\":\"exec\",\"command\":\"ok\"}")
  (func (export "heal") (result i32)
    (drop (call $action (i32.const 0) (i32.const 30)))
    (i32.const 0)))
