;; A shared memory and an endless atomic wait: a thread blocked outside wasm cannot be interrupted.
;; expect: patch_rejected
(module (memory (export "memory") 1 1 shared)
  (func (export "heal") (result i32)
    (drop (memory.atomic.wait32 (i32.const 0) (i32.const 0) (i64.const -1)))
    (i32.const 0)))
