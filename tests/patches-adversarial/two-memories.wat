;; Declares a second memory to get past the memory cap.
;; expect: patch_rejected
(module (memory (export "memory") 1) (memory $b 256)
  (func (export "heal") (result i32) (i32.const 0)))
