;; Throws a wasm exception (exception-handling proposal).
;; expect: patch_rejected
(module (memory (export "memory") 1) (tag $e)
  (func (export "heal") (result i32) (throw $e)))
