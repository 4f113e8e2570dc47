;; A 64-bit memory grown far past the cap.
;; expect: sandbox_error memory_limit
(module (memory (export "memory") i64 1)
  (func (export "heal") (result i32) (drop (memory.grow (i64.const 100000))) (i32.const 0)))
