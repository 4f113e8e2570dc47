;; Imports phoenix.action with another signature.
;; expect: patch_rejected wrong type
(module
  (import "phoenix" "action" (func (param i64) (result i32)))
  (memory (export "memory") 1)
  (func (export "heal") (result i32) (i32.const 0)))
