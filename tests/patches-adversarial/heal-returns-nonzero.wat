;; `heal` returns 7, not 0: the patch declines, and nothing of its plan runs.
;; expect: sandbox_error declined: heal() returned 7
(module (memory (export "memory") 1)
  (func (export "heal") (result i32) (i32.const 7)))
