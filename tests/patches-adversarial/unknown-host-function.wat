;; Imports a host function phoenix does not offer.
;; expect: patch_rejected phoenix.exec_now is not allowed
(module
  (import "phoenix" "exec_now" (func (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "heal") (result i32) (i32.const 0)))
