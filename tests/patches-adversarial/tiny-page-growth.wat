;; Grows a memory of 1-byte pages by 65,535 bytes at a time (never page-aligned) until refused:
;; stopped at the memory cap, counted in bytes.
;; expect: sandbox_error memory_limit
(module (memory (export "memory") 1 (pagesize 1))
  (func (export "heal") (result i32)
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 65535)) (i32.const -1))))
    (i32.const 0)))
