;; Exports a host function as heal.
;; expect: patch_rejected heal
(module (import "phoenix" "log" (func $log (param i32 i32))) (memory (export "memory") 1)
  (export "heal" (func $log)))
